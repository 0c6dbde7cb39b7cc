// The Nagare switch's match-action pipeline (seed section 4), synthesizable and
// parameterized, without vendor IP. It is the RTL counterpart of `nagare::pipeline` in
// devices/nagare. Each cycle, one memory-write TLP header (requester port, address,
// length) enters. The verdict leaves STAGES cycles later: to memory, forward (with the
// rewritten destination), or drop (with the reason). The pipeline is fully pipelined.
//
// Stages (the functional ones first; the rest only add latency, as in the timing model):
//   1 address   address in the windows -> stream, offset (else: memory)
//   2 stream    stream closed -> drop NO_ROUTE
//   3 access    requester not on the stream's allow list -> drop ACL_DENIED
//   4 next hop  the node after the requester's (the CPU enters at the ingress)
//   5 rewrite   destination = next node's input window, offset modulo its size
//               (a glued device: the switch's staging, modulo 64 KiB)
//   6 credit    the ingress pipe's head credit (flits, modulo the 2 MiB window)
//
// Configuration is written through a word interface (cfg_we/cfg_addr/cfg_wdata). The layout
// follows the map of testbed_regs::nagare, flattened:
//   0x000 WINDOW_BASE_LO, 0x004 WINDOW_BASE_HI
//   0x040 + 4*p  port p's input window, as log2 of its size (0: the port takes no pushes)
//   0x100 + 0x40*s + 0x00  stream s: bit 0 open
//                  + 0x04  allow list (bit per port)
//                  + 0x08  nodes in the graph
//                  + 0x10 + 4*h  node h: port [3:0], kind [7:4], pipe [31:16]
module nagare_pipeline #(
    parameter int STREAMS = 8,
    parameter int MAX_HOPS = 6,
    parameter int PORTS = 8,
    parameter int STAGES = 10
) (
    input  logic        clk,
    input  logic        rst,
    // Configuration.
    input  logic        cfg_we,
    input  logic [11:0] cfg_addr,
    input  logic [31:0] cfg_wdata,
    // TLP headers in.
    input  logic        in_valid,
    input  logic [3:0]  in_src,
    input  logic [63:0] in_addr,
    input  logic [15:0] in_len,
    // Verdicts out, STAGES cycles later.
    output logic        out_valid,
    output logic [1:0]  out_verdict,      // 0 memory, 1 forward, 2 drop
    output logic [3:0]  out_reason,       // counter index of the drop (8 ACL, 9 no route)
    output logic [3:0]  out_stream,
    output logic [3:0]  out_dest_port,
    output logic [20:0] out_dest_offset,
    output logic        out_egress,
    output logic        out_glue,
    output logic        out_credit,
    output logic [15:0] out_credit_pipe,
    output logic [14:0] out_credit_head
);
    localparam logic [1:0] V_MEMORY = 2'd0, V_FORWARD = 2'd1, V_DROP = 2'd2, V_UNDECIDED = 2'd3;
    localparam logic [3:0] R_ACL = 4'd8, R_NO_ROUTE = 4'd9;
    localparam logic [3:0] K_INGRESS = 4'd1, K_GLUE = 4'd4;
    localparam int WINDOW_LOG2 = 21;
    localparam logic [63:0] WINDOWS = 64'(STREAMS) << WINDOW_LOG2;

    // ---- tables ---------------------------------------------------------------------
    logic [63:0] base;
    logic [4:0]  port_win [PORTS];
    logic        s_open [STREAMS];
    logic [31:0] s_acl [STREAMS];
    logic [3:0]  s_hops [STREAMS];
    logic [3:0]  h_port [STREAMS][MAX_HOPS];
    logic [3:0]  h_kind [STREAMS][MAX_HOPS];
    logic [15:0] h_pipe [STREAMS][MAX_HOPS];

    always_ff @(posedge clk) begin
        if (rst) begin
            base <= '0;
            for (int s = 0; s < STREAMS; s++) begin
                s_open[s] <= 1'b0;
                s_acl[s] <= '0;
                s_hops[s] <= '0;
            end
            for (int p = 0; p < PORTS; p++) port_win[p] <= '0;
        end else if (cfg_we) begin
            if (cfg_addr == 12'h000) base[31:0] <= cfg_wdata;
            else if (cfg_addr == 12'h004) base[63:32] <= cfg_wdata;
            else if (cfg_addr >= 12'h040 && cfg_addr < 12'h040 + 12'(4 * PORTS))
                port_win[(cfg_addr - 12'h040) >> 2] <= cfg_wdata[4:0];
            else if (cfg_addr >= 12'h100 && cfg_addr < 12'h100 + 12'(64 * STREAMS)) begin
                /* verilator lint_off UNUSEDSIGNAL */
                automatic int s = int'((cfg_addr - 12'h100) >> 6);
                /* verilator lint_on UNUSEDSIGNAL */
                automatic logic [5:0] o = 6'(cfg_addr - 12'h100);
                if (o == 6'h00) s_open[s] <= cfg_wdata[0];
                else if (o == 6'h04) s_acl[s] <= cfg_wdata;
                else if (o == 6'h08) s_hops[s] <= cfg_wdata[3:0];
                else if (o >= 6'h10 && o < 6'h10 + 6'(4 * MAX_HOPS)) begin
                    /* verilator lint_off UNUSEDSIGNAL */
                    automatic int h = int'((o - 6'h10) >> 2);
                    /* verilator lint_on UNUSEDSIGNAL */
                    h_port[s][h] <= cfg_wdata[3:0];
                    h_kind[s][h] <= cfg_wdata[7:4];
                    h_pipe[s][h] <= cfg_wdata[31:16];
                end
            end
        end
    end

    // ---- the packet header vector ---------------------------------------------------
    typedef struct packed {
        logic        valid;
        logic [3:0]  src;
        logic [15:0] len;
        logic [1:0]  verdict;
        logic [3:0]  reason;
        logic [3:0]  stream;
        logic [20:0] offset;
        logic [3:0]  node;
        logic [3:0]  next_port;
        logic [3:0]  next_kind;
        logic        egress;
        logic        glue;
        logic [20:0] dest_offset;
        logic        credit;
        logic [15:0] credit_pipe;
        logic [14:0] credit_head;
    } phv_t;

    phv_t st [STAGES + 1];
    logic [63:0] addr_q;

    // Stage 0 input register.
    always_ff @(posedge clk) begin
        if (rst) st[0] <= '0;
        else begin
            st[0] <= '0;
            st[0].valid <= in_valid;
            st[0].src <= in_src;
            st[0].len <= in_len;
            st[0].verdict <= V_UNDECIDED;
            addr_q <= in_addr;
        end
    end

    // Stage 1: address.
    always_ff @(posedge clk) begin
        automatic phv_t p = st[0];
        automatic logic [63:0] rel = addr_q - base;
        if (base == '0 || addr_q < base || rel >= WINDOWS || rel + 64'(p.len) > WINDOWS)
            p.verdict = V_MEMORY;
        else begin
            p.stream = 4'(rel >> WINDOW_LOG2);
            p.offset = rel[20:0];
        end
        st[1] <= rst ? '0 : p;
    end

    // Stage 2: stream.
    always_ff @(posedge clk) begin
        automatic phv_t p = st[1];
        if (p.verdict == V_UNDECIDED && !s_open[p.stream]) begin
            p.verdict = V_DROP;
            p.reason = R_NO_ROUTE;
        end
        st[2] <= rst ? '0 : p;
    end

    // Stage 3: access.
    always_ff @(posedge clk) begin
        automatic phv_t p = st[2];
        if (p.verdict == V_UNDECIDED && !s_acl[p.stream][p.src]) begin
            p.verdict = V_DROP;
            p.reason = R_ACL;
        end
        st[3] <= rst ? '0 : p;
    end

    // Stage 4: next hop.
    always_ff @(posedge clk) begin
        automatic phv_t p = st[3];
        if (p.verdict == V_UNDECIDED) begin
            automatic logic [3:0] last = s_hops[p.stream] - 4'd1;
            automatic logic found = 1'b0;
            automatic logic [3:0] node = '0;
            if (s_hops[p.stream] >= 4'd2) begin
                if (p.src == 4'd0) begin
                    found = 1'b1;
                    node = '0;
                end else begin
                    for (int h = MAX_HOPS - 1; h >= 0; h--) begin
                        if (4'(h) < last && h_port[p.stream][h] == p.src) begin
                            found = 1'b1;
                            node = 4'(h);
                        end
                    end
                end
            end
            if (found) begin
                p.node = node;
                p.next_port = h_port[p.stream][node + 4'd1];
                p.next_kind = h_kind[p.stream][node + 4'd1];
                p.egress = (node + 4'd1 == last);
            end else begin
                p.verdict = V_DROP;
                p.reason = R_NO_ROUTE;
            end
        end
        st[4] <= rst ? '0 : p;
    end

    // Stage 5: rewrite.
    always_ff @(posedge clk) begin
        automatic phv_t p = st[4];
        if (p.verdict == V_UNDECIDED) begin
            if (p.next_kind == K_GLUE) begin
                p.glue = 1'b1;
                p.dest_offset = {5'd0, p.offset[15:0]};
                p.verdict = V_FORWARD;
            end else if (port_win[p.next_port] == '0) begin
                p.verdict = V_DROP;
                p.reason = R_NO_ROUTE;
            end else begin
                p.dest_offset = p.offset & 21'((64'd1 << port_win[p.next_port]) - 64'd1);
                p.verdict = V_FORWARD;
            end
        end
        st[5] <= rst ? '0 : p;
    end

    // Stage 6: credit.
    always_ff @(posedge clk) begin
        automatic phv_t p = st[5];
        if (p.verdict == V_FORWARD && p.node == '0 && p.src != 4'd0
            && h_kind[p.stream][0] == K_INGRESS && h_port[p.stream][0] == p.src) begin
            /* verilator lint_off UNUSEDSIGNAL */
            automatic logic [21:0] end_ = 22'(p.offset) + 22'(p.len) + 22'd63;
            /* verilator lint_on UNUSEDSIGNAL */
            p.credit = 1'b1;
            p.credit_pipe = h_pipe[p.stream][0];
            p.credit_head = end_[20:6];
        end
        st[6] <= rst ? '0 : p;
    end

    // Stages 7..STAGES: no tables, latency only.
    for (genvar i = 7; i <= STAGES; i++) begin : g_delay
        always_ff @(posedge clk) st[i] <= rst ? '0 : st[i - 1];
    end

    assign out_valid = st[STAGES].valid;
    assign out_verdict = st[STAGES].verdict == V_UNDECIDED ? V_DROP : st[STAGES].verdict;
    assign out_reason = st[STAGES].verdict == V_UNDECIDED ? R_NO_ROUTE : st[STAGES].reason;
    assign out_stream = st[STAGES].stream;
    assign out_dest_port = st[STAGES].next_port;
    assign out_dest_offset = st[STAGES].dest_offset;
    assign out_egress = st[STAGES].egress;
    assign out_glue = st[STAGES].glue;
    assign out_credit = st[STAGES].credit;
    assign out_credit_pipe = st[STAGES].credit_pipe;
    assign out_credit_head = st[STAGES].credit_head;
endmodule

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

    // Configuration address decode (only the low bits of the indices are used: the
    // range checks below bound them).
    logic [11:0] cfg_rel;
    /* verilator lint_off UNUSEDSIGNAL */
    logic [11:0] cfg_s;
    logic [5:0]  cfg_h;
    /* verilator lint_on UNUSEDSIGNAL */
    logic [5:0]  cfg_o;
    always_comb begin
        cfg_rel = cfg_addr - 12'h100;
        cfg_s = cfg_rel >> 6;
        cfg_o = cfg_rel[5:0];
        cfg_h = (cfg_o - 6'h10) >> 2;
    end

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
                if (cfg_o == 6'h00) s_open[cfg_s] <= cfg_wdata[0];
                else if (cfg_o == 6'h04) s_acl[cfg_s] <= cfg_wdata;
                else if (cfg_o == 6'h08) s_hops[cfg_s] <= cfg_wdata[3:0];
                else if (cfg_o >= 6'h10 && cfg_o < 6'h10 + 6'(4 * MAX_HOPS)) begin
                    h_port[cfg_s][cfg_h] <= cfg_wdata[3:0];
                    h_kind[cfg_s][cfg_h] <= cfg_wdata[7:4];
                    h_pipe[cfg_s][cfg_h] <= cfg_wdata[31:16];
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

    phv_t st_0, st_1, st_2, st_3, st_4, st_5, st_6;
    // Stages 7..STAGES only delay: plain vectors.
    localparam int PHV_BITS = 119;  // $bits(phv_t), spelled out for yosys
    logic [PHV_BITS-1:0] dly [6:STAGES];
    logic [63:0] addr_q;

    // Stage 0 input register.
    always_ff @(posedge clk) begin
        if (rst) st_0 <= '0;
        else begin
            st_0 <= '0;
            st_0.valid <= in_valid;
            st_0.src <= in_src;
            st_0.len <= in_len;
            st_0.verdict <= V_UNDECIDED;
            addr_q <= in_addr;
        end
    end

    // Each stage: the next vector (combinational), then its register.
    phv_t nx_1, nx_2, nx_3, nx_4, nx_5, nx_6;
    logic [63:0] rel;

    // Stage 1: address.
    always_comb begin
        nx_1 = st_0;
        rel = addr_q - base;
        if (base == '0 || addr_q < base || rel >= WINDOWS || rel + {48'd0, st_0.len} > WINDOWS)
            nx_1.verdict = V_MEMORY;
        else begin
            nx_1.stream = rel[24:21];
            nx_1.offset = rel[20:0];
        end
    end

    // Stage 2: stream.
    always_comb begin
        nx_2 = st_1;
        if (st_1.verdict == V_UNDECIDED && !s_open[st_1.stream]) begin
            nx_2.verdict = V_DROP;
            nx_2.reason = R_NO_ROUTE;
        end
    end

    // Stage 3: access.
    always_comb begin
        nx_3 = st_2;
        if (st_2.verdict == V_UNDECIDED && !s_acl[st_2.stream][st_2.src]) begin
            nx_3.verdict = V_DROP;
            nx_3.reason = R_ACL;
        end
    end

    // Stage 4: next hop.
    logic [3:0] last4, node4;
    logic found4;
    always_comb begin
        nx_4 = st_3;
        last4 = s_hops[st_3.stream] - 4'd1;
        found4 = 1'b0;
        node4 = '0;
        if (s_hops[st_3.stream] >= 4'd2) begin
            if (st_3.src == 4'd0) found4 = 1'b1;
            else begin
                for (int h = MAX_HOPS - 1; h >= 0; h--) begin
                    if (4'(h) < last4 && h_port[st_3.stream][h] == st_3.src) begin
                        found4 = 1'b1;
                        node4 = 4'(h);
                    end
                end
            end
        end
        if (st_3.verdict == V_UNDECIDED) begin
            if (found4) begin
                nx_4.node = node4;
                nx_4.next_port = h_port[st_3.stream][node4 + 4'd1];
                nx_4.next_kind = h_kind[st_3.stream][node4 + 4'd1];
                nx_4.egress = (node4 + 4'd1 == last4);
            end else begin
                nx_4.verdict = V_DROP;
                nx_4.reason = R_NO_ROUTE;
            end
        end
    end

    // Stage 5: rewrite.
    logic [20:0] mask5;
    always_comb begin
        nx_5 = st_4;
        mask5 = 21'((64'd1 << port_win[st_4.next_port]) - 64'd1);
        if (st_4.verdict == V_UNDECIDED) begin
            if (st_4.next_kind == K_GLUE) begin
                nx_5.glue = 1'b1;
                nx_5.dest_offset = {5'd0, st_4.offset[15:0]};
                nx_5.verdict = V_FORWARD;
            end else if (port_win[st_4.next_port] == '0) begin
                nx_5.verdict = V_DROP;
                nx_5.reason = R_NO_ROUTE;
            end else begin
                nx_5.dest_offset = st_4.offset & mask5;
                nx_5.verdict = V_FORWARD;
            end
        end
    end

    // Stage 6: credit.
    /* verilator lint_off UNUSEDSIGNAL */
    logic [21:0] end6;
    /* verilator lint_on UNUSEDSIGNAL */
    always_comb begin
        nx_6 = st_5;
        end6 = {1'b0, st_5.offset} + {6'd0, st_5.len} + 22'd63;
        if (st_5.verdict == V_FORWARD && st_5.node == '0 && st_5.src != 4'd0
            && h_kind[st_5.stream][0] == K_INGRESS && h_port[st_5.stream][0] == st_5.src) begin
            nx_6.credit = 1'b1;
            nx_6.credit_pipe = h_pipe[st_5.stream][0];
            nx_6.credit_head = end6[20:6];
        end
    end

    // The stage registers.
    always_ff @(posedge clk) begin
        st_1 <= rst ? '0 : nx_1;
        st_2 <= rst ? '0 : nx_2;
        st_3 <= rst ? '0 : nx_3;
        st_4 <= rst ? '0 : nx_4;
        st_5 <= rst ? '0 : nx_5;
        st_6 <= rst ? '0 : nx_6;
    end

    // Stages 7..STAGES: no tables, latency only.
    assign dly[6] = st_6;
    for (genvar i = 7; i <= STAGES; i++) begin : g_delay
        always_ff @(posedge clk) dly[i] <= rst ? '0 : dly[i - 1];
    end
    /* verilator lint_off UNUSEDSIGNAL */
    phv_t last;  // its working fields (node, next kind, ...) are not outputs
    /* verilator lint_on UNUSEDSIGNAL */
    assign last = dly[STAGES];

    assign out_valid = last.valid;
    assign out_verdict = last.verdict == V_UNDECIDED ? V_DROP : last.verdict;
    assign out_reason = last.verdict == V_UNDECIDED ? R_NO_ROUTE : last.reason;
    assign out_stream = last.stream;
    assign out_dest_port = last.next_port;
    assign out_dest_offset = last.dest_offset;
    assign out_egress = last.egress;
    assign out_glue = last.glue;
    assign out_credit = last.credit;
    assign out_credit_pipe = last.credit_pipe;
    assign out_credit_head = last.credit_head;
endmodule

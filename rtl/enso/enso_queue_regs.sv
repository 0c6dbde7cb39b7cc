// The register front end of the Ensō queue engine: the queue pages of ENSO-INTERFACE.md
// (one 64-byte QueueRegs block per queue: rx_tail, rx_head, rx_mem_low, rx_mem_high,
// tx_tail, tx_head, tx_mem_low, tx_mem_high; queue i < 8192 is pipe i, 8192 + j is
// notification-buffer pair j) decoded into enso_queue_engine calls, as the FPGA's register
// block would do for MMIO writes:
//   pipe rx_mem_low with the enable bit  ENABLE_PIPE (base = rx_mem_high:rx_mem_low's
//                                        address bits, pair = its low bits, head, tail);
//                without                 DISABLE_PIPE
//   pipe rx_head                         RX_HEAD (enabled pipes)
//   pair rx_mem_low with the enable bit  ENABLE_NB (both rings, heads, tail); without: DISABLE_NB
//   pair tx_tail                         TX_TAIL, repeated until the engine caught up
//   pair rx_head                         kept here: the engine's head-refresh requests
//                                        (NB_RX_HEAD) are answered from it
// Our extension (its own codes, not in the upstream block): reg 0x20 the prefetch doorbell
// (data = pipe), reg 0x24 the notification mode (bit 0: per packet). Frames steered to a
// pipe come in on rx_*. What the engine publishes (pipe rx_tail, pair rx_tail and tx_head)
// is kept for the read port. Every other engine event passes out on io_*. A write the
// engine cannot take (enable with a pair out of range, prefetch of a disabled pipe) is
// counted in bad_writes.
module enso_queue_regs #(
    parameter int NPIPES = 64,
    parameter int NNB = 16,
    parameter int PIPE_LOG2 = 15,
    parameter int ENTRIES_LOG2 = 14
) (
    input  logic        clk,
    input  logic        rst,
    // Register writes.
    input  logic        wr_valid,
    output logic        wr_ready,
    input  logic [13:0] wr_queue,
    input  logic [5:0]  wr_reg,
    input  logic [31:0] wr_data,
    // Frames steered to a pipe (length in bytes).
    input  logic        rx_valid,
    output logic        rx_ready,
    input  logic [31:0] rx_pipe,
    input  logic [31:0] rx_len,
    // Register reads (combinational).
    input  logic [13:0] rd_queue,
    input  logic [5:0]  rd_reg,
    output logic [31:0] rd_data,
    // The engine's events and their answers, as enso_queue_engine's (minus NB_RX_HEAD and
    // DONE, handled here).
    output logic        io_valid,
    input  logic        io_ready,
    output logic [3:0]  io_kind,
    output logic [31:0] io_q,
    output logic [63:0] io_a,
    output logic [31:0] io_b,
    output logic [31:0] io_c,
    output logic [31:0] io_d,
    output logic [31:0] io_e,
    input  logic        resp_valid,
    input  logic        resp_ok,
    input  logic [31:0] resp_value,
    input  logic        ent_valid,
    input  logic [63:0] ent_signal,
    input  logic [63:0] ent_addr,
    input  logic [63:0] ent_len,
    output logic [31:0] bad_writes
);
    localparam logic [31:0] ENABLE = 32'h0010_0000, NB_ID_MASK = 32'h3ff;
    localparam logic [31:0] PIPE_ADDR_MASK = ~32'h001f_ffff, NB_ADDR_MASK = ~32'h000f_ffff;
    localparam logic [5:0] R_RX_TAIL = 6'h00, R_RX_HEAD = 6'h04, R_RX_MEM_LOW = 6'h08,
        R_RX_MEM_HIGH = 6'h0c, R_TX_TAIL = 6'h10, R_TX_HEAD = 6'h14, R_TX_MEM_LOW = 6'h18,
        R_TX_MEM_HIGH = 6'h1c, R_PREFETCH = 6'h20, R_MODE = 6'h24;
    localparam logic [3:0] IO_PUBLISH = 3, IO_NB_RX_HEAD = 4, IO_DONE = 9;

    // ---- the register file --------------------------------------------------------
    logic        pipe_en [NPIPES];
    logic [31:0] p_rx_tail [NPIPES], p_rx_head [NPIPES], p_rx_low [NPIPES], p_rx_high [NPIPES];
    logic        nb_en [NNB];
    logic [31:0] n_rx_tail [NNB], n_rx_head [NNB], n_rx_low [NNB], n_rx_high [NNB];
    logic [31:0] n_tx_tail [NNB], n_tx_head [NNB], n_tx_low [NNB], n_tx_high [NNB];

    // ---- the engine ---------------------------------------------------------------
    logic        cmd_valid, cmd_ready;
    logic [3:0]  cmd_op;
    logic [31:0] cmd_q, cmd_b, cmd_c, cmd_d;
    logic [63:0] cmd_a;
    logic        e_io_valid, e_io_ready, e_resp_valid, e_resp_ok;
    logic [3:0]  e_io_kind;
    logic [31:0] e_io_q, e_io_b, e_io_c, e_io_d, e_io_e, e_resp_value;
    logic [63:0] e_io_a;
    enso_queue_engine #(.NPIPES(NPIPES), .NNB(NNB), .PIPE_LOG2(PIPE_LOG2), .ENTRIES_LOG2(ENTRIES_LOG2)) engine (
        .clk, .rst, .cmd_valid, .cmd_ready, .cmd_op, .cmd_q, .cmd_a, .cmd_b, .cmd_c, .cmd_d,
        .io_valid(e_io_valid), .io_ready(e_io_ready), .io_kind(e_io_kind), .io_q(e_io_q), .io_a(e_io_a),
        .io_b(e_io_b), .io_c(e_io_c), .io_d(e_io_d), .io_e(e_io_e), .resp_valid(e_resp_valid),
        .resp_ok(e_resp_ok), .resp_value(e_resp_value), .ent_valid, .ent_signal, .ent_addr, .ent_len);

    // Events handled here: taken at once; the rest pass out.
    logic local_ev;
    assign local_ev = e_io_kind == IO_NB_RX_HEAD || e_io_kind == IO_DONE || e_io_kind == IO_PUBLISH;
    assign io_valid = e_io_valid && e_io_kind != IO_NB_RX_HEAD && e_io_kind != IO_DONE;
    assign e_io_ready = local_ev ? 1'b1 : io_ready;
    assign {io_kind, io_q, io_a, io_b, io_c, io_d, io_e} = {e_io_kind, e_io_q, e_io_a, e_io_b, e_io_c, e_io_d, e_io_e};
    // The head-refresh answer, one cycle after the request was taken.
    logic        answer;
    logic [31:0] answer_value;
    assign e_resp_valid = answer | resp_valid;
    assign e_resp_ok = answer | resp_ok;
    assign e_resp_value = answer ? answer_value : resp_value;

    // ---- one engine call at a time --------------------------------------------------
    typedef enum logic [2:0] {S_IDLE, S_CMD, S_WAIT, S_ENABLE_NB} state_t;
    state_t state;
    logic [13:0] q;
    logic [31:0] nb_q;               // the pair a write addresses
    logic        is_tx;          // the call in hand is TX_TAIL (repeated until caught up)

    assign wr_ready = state == S_IDLE && !rst;
    assign rx_ready = state == S_IDLE && !rst && !wr_valid;

    /* verilator lint_off UNUSEDSIGNAL */
    logic [31:0] wq, rq;
    /* verilator lint_on UNUSEDSIGNAL */
    assign wq = 32'(wr_queue);
    assign nb_q = wq - 32'd8192;
    assign rq = 32'(rd_queue);

    always_comb begin
        rd_data = 0;
        if (rq < NPIPES) begin
            case (rd_reg)
                R_RX_TAIL: rd_data = p_rx_tail[rq];
                R_RX_HEAD: rd_data = p_rx_head[rq];
                R_RX_MEM_LOW: rd_data = p_rx_low[rq];
                R_RX_MEM_HIGH: rd_data = p_rx_high[rq];
                default: ;
            endcase
        end else if (rq >= 8192 && rq - 8192 < NNB) begin
            case (rd_reg)
                R_RX_TAIL: rd_data = n_rx_tail[rq - 8192];
                R_RX_HEAD: rd_data = n_rx_head[rq - 8192];
                R_RX_MEM_LOW: rd_data = n_rx_low[rq - 8192];
                R_RX_MEM_HIGH: rd_data = n_rx_high[rq - 8192];
                R_TX_TAIL: rd_data = n_tx_tail[rq - 8192];
                R_TX_HEAD: rd_data = n_tx_head[rq - 8192];
                R_TX_MEM_LOW: rd_data = n_tx_low[rq - 8192];
                R_TX_MEM_HIGH: rd_data = n_tx_high[rq - 8192];
                default: ;
            endcase
        end
    end

    always_ff @(posedge clk) begin
        if (rst) begin
            state <= S_IDLE;
            cmd_valid <= 1'b0;
            answer <= 1'b0;
            bad_writes <= 0;
            for (int k = 0; k < NPIPES; k++) begin
                pipe_en[k] <= 0; p_rx_tail[k] <= 0; p_rx_head[k] <= 0; p_rx_low[k] <= 0; p_rx_high[k] <= 0;
            end
            for (int k = 0; k < NNB; k++) begin
                nb_en[k] <= 0; n_rx_tail[k] <= 0; n_rx_head[k] <= 0; n_rx_low[k] <= 0; n_rx_high[k] <= 0;
                n_tx_tail[k] <= 0; n_tx_head[k] <= 0; n_tx_low[k] <= 0; n_tx_high[k] <= 0;
            end
        end else begin
            answer <= 1'b0;
            // Events handled here.
            if (e_io_valid && e_io_ready) begin
                if (e_io_kind == IO_NB_RX_HEAD) begin
                    answer <= 1'b1;
                    answer_value <= e_io_q < NNB ? n_rx_head[e_io_q] : 0;
                end
                if (e_io_kind == IO_PUBLISH) begin
                    if (e_io_c == 0 && e_io_q < NPIPES) p_rx_tail[e_io_q] <= e_io_b;
                    if (e_io_c == 1 && e_io_q < NNB) n_rx_tail[e_io_q] <= e_io_b;
                    if (e_io_c == 2 && e_io_q < NNB) n_tx_head[e_io_q] <= e_io_b;
                end
                if (e_io_kind == IO_DONE && state == S_WAIT) begin
                    // TX: again until the engine caught up with the tail.
                    if (is_tx && e_io_b == 0) begin
                        cmd_valid <= 1'b1;
                        state <= S_CMD;
                    end else state <= S_IDLE;
                end
            end
            case (state)
            S_IDLE:
                if (wr_valid) begin
                    q <= wr_queue;
                    is_tx <= 1'b0;
                    cmd_q <= wq; cmd_a <= 0; cmd_b <= wr_data; cmd_c <= 0; cmd_d <= 0;
                    if (wr_reg == R_MODE) begin
                        cmd_op <= 6; cmd_valid <= 1'b1; state <= S_CMD;
                    end else if (wr_reg == R_PREFETCH) begin
                        if (wr_data < NPIPES && pipe_en[wr_data]) begin
                            cmd_op <= 10; cmd_q <= wr_data; cmd_valid <= 1'b1; state <= S_CMD;
                        end else bad_writes <= bad_writes + 1;
                    end else if (wq < NPIPES) begin
                        case (wr_reg)
                        R_RX_TAIL: p_rx_tail[wq] <= wr_data;
                        R_RX_HEAD: begin
                            p_rx_head[wq] <= wr_data;
                            if (pipe_en[wq]) begin
                                cmd_op <= 9; cmd_valid <= 1'b1; state <= S_CMD;
                            end
                        end
                        R_RX_MEM_HIGH: p_rx_high[wq] <= wr_data;
                        R_RX_MEM_LOW: begin
                            p_rx_low[wq] <= wr_data;
                            if ((wr_data & ENABLE) != 0) begin
                                if ((wr_data & NB_ID_MASK) >= NNB) bad_writes <= bad_writes + 1;
                                else begin
                                    pipe_en[wq] <= 1'b1;
                                    cmd_op <= 1;
                                    cmd_a <= {p_rx_high[wq], wr_data & PIPE_ADDR_MASK};
                                    cmd_b <= wr_data & NB_ID_MASK;
                                    cmd_c <= p_rx_head[wq];
                                    cmd_d <= p_rx_tail[wq];
                                    cmd_valid <= 1'b1;
                                    state <= S_CMD;
                                end
                            end else if (pipe_en[wq]) begin
                                pipe_en[wq] <= 1'b0;
                                cmd_op <= 2; cmd_valid <= 1'b1; state <= S_CMD;
                            end
                        end
                        default: ;
                        endcase
                    end else if (wq >= 8192 && wq - 8192 < NNB) begin
                        cmd_q <= nb_q;
                        case (wr_reg)
                        R_RX_TAIL: n_rx_tail[nb_q] <= wr_data;
                        R_RX_HEAD: n_rx_head[nb_q] <= wr_data;
                        R_RX_MEM_HIGH: n_rx_high[nb_q] <= wr_data;
                        R_TX_HEAD: n_tx_head[nb_q] <= wr_data;
                        R_TX_MEM_LOW: n_tx_low[nb_q] <= wr_data;
                        R_TX_MEM_HIGH: n_tx_high[nb_q] <= wr_data;
                        R_TX_TAIL: begin
                            n_tx_tail[nb_q] <= wr_data;
                            if (nb_en[nb_q]) begin
                                is_tx <= 1'b1;
                                cmd_op <= 11; cmd_valid <= 1'b1; state <= S_CMD;
                            end
                        end
                        R_RX_MEM_LOW: begin
                            n_rx_low[nb_q] <= wr_data;
                            if ((wr_data & ENABLE) != 0) begin
                                // The TX ring is latched first, then the pair enabled.
                                nb_en[nb_q] <= 1'b1;
                                cmd_op <= 3;
                                cmd_a <= {n_tx_high[nb_q], n_tx_low[nb_q] & NB_ADDR_MASK};
                                cmd_valid <= 1'b1;
                                state <= S_CMD;
                            end else if (nb_en[nb_q]) begin
                                nb_en[nb_q] <= 1'b0;
                                cmd_op <= 5; cmd_valid <= 1'b1; state <= S_CMD;
                            end
                        end
                        default: ;
                        endcase
                    end
                end else if (rx_valid) begin
                    is_tx <= 1'b0;
                    cmd_op <= 8; cmd_q <= rx_pipe; cmd_b <= rx_len; cmd_valid <= 1'b1;
                    state <= S_CMD;
                end
            S_CMD:
                if (cmd_ready) begin
                    cmd_valid <= 1'b0;
                    state <= (cmd_op == 3) ? S_ENABLE_NB : S_WAIT;
                end
            S_ENABLE_NB:
                // NB_TX_RING is done when the engine is idle again: enable the pair.
                if (e_io_valid && e_io_kind == IO_DONE) begin
                    cmd_op <= 4;
                    cmd_a <= {n_rx_high[q - 8192], n_rx_low[q - 8192] & NB_ADDR_MASK & ~ENABLE};
                    cmd_b <= n_rx_head[q - 8192];
                    cmd_c <= n_rx_tail[q - 8192];
                    cmd_d <= n_tx_head[q - 8192];
                    cmd_valid <= 1'b1;
                    state <= S_CMD;
                end
            default: ;
            endcase
        end
    end
endmodule

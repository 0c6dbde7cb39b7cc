// The register front end of the Ensō queue engine: the queue pages of ENSO-INTERFACE.md
// (one 64-byte QueueRegs block per queue: rx_tail, rx_head, rx_mem_low, rx_mem_high,
// tx_tail, tx_head, tx_mem_low, tx_mem_high; queue i < 8192 is pipe i, 8192 + j is
// notification-buffer pair j) decoded into enso_queue_engine calls with the card's
// semantics, as the FPGA's register block would do for MMIO writes, one write at a time:
//   a queue is live while its address is non-zero (a pipe: rx_mem_high:rx_mem_low, the
//     pair ID in its low bits included; a pair: its RX or its TX ring address), so any
//     write order works; a write of either half re-reads both:
//     pipe  becomes live ENABLE_PIPE (base = the address without the pair ID bits, pair
//                        = those bits, head, tail); moves: ENABLE_PIPE again; stops:
//                        DISABLE_PIPE
//     pair  becomes live or moves: NB_TX_RING, ENABLE_NB (then TX_TAIL if the TX ring is
//                        set and entries wait); stops: DISABLE_NB
//   a write of a register the device owns (a pipe's or pair's rx_tail, a pair's tx_head)
//     sets the device's value: the live queue restarts from the registers
//   pipe rx_head                         RX_HEAD (live pipes; the unchanged value is the
//                                        card's prefetch)
//   pair tx_tail                         TX_TAIL (live pairs with a TX ring), repeated
//                                        until the engine caught up
//   pair rx_head                         kept here: the engine's head-refresh requests
//                                        (NB_RX_HEAD) are answered from it
// Our extensions (their own codes, not in the upstream block, any queue): reg 0x20 the
// prefetch doorbell (data = pipe), 0x24 the notification mode (bit 0: per packet), 0x28 a
// stream pipe (data = pipe | on << 31), 0x2c the extension bits (bit 0: a queue is live
// while bit 20 of rx_mem_low is set, and that bit is not an address bit). Read code 0x30
// gives whether the queue is live. Frames steered to a pipe come in on rx_*. What the engine
// publishes (pipe rx_tail, pair rx_tail and tx_head) is kept for the read port. Every other
// engine event passes out on io_*. A write the engine cannot take (a pipe naming a pair out
// of range, a prefetch of a pipe that is not live) is counted in bad_writes.
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
    // Writes the engine could not take.
    output logic [31:0] bad_writes,
    // The engine's events and their answers, as enso_queue_engine's (minus NB_RX_HEAD and
    // DONE, handled here).
`include "enso_io_ports.svh"
);
    localparam logic [31:0] ENABLE = 32'h0010_0000, NB_ID_MASK = 32'h3ff;
    localparam logic [5:0] R_RX_TAIL = 6'h00, R_RX_HEAD = 6'h04, R_RX_MEM_LOW = 6'h08,
        R_RX_MEM_HIGH = 6'h0c, R_TX_TAIL = 6'h10, R_TX_HEAD = 6'h14, R_TX_MEM_LOW = 6'h18,
        R_TX_MEM_HIGH = 6'h1c, R_PREFETCH = 6'h20, R_MODE = 6'h24, R_STREAM = 6'h28, R_EXT = 6'h2c,
        R_LIVE = 6'h30;

    // The ENABLE-bit extension in force (0: the card's rule).
    logic ext_en;

    // A pipe's address registers: live, and the buffer's address.
    function automatic logic pipe_live(input logic [31:0] lo, input logic [31:0] hi, input logic ext);
        pipe_live = ext ? (lo & ENABLE) != 0 : {hi, lo} != 64'd0;
    endfunction
    function automatic logic [63:0] pipe_base(input logic [31:0] lo, input logic [31:0] hi, input logic ext);
        pipe_base = {hi, lo & ~NB_ID_MASK & (ext ? ~ENABLE : 32'hffff_ffff)};
    endfunction
    // A pair's RX ring address (the TX ring's is its registers as written).
    function automatic logic [63:0] rx_ring(input logic [31:0] lo, input logic [31:0] hi, input logic ext);
        rx_ring = {hi, lo & (ext ? ~ENABLE : 32'hffff_ffff)};
    endfunction
    function automatic logic nb_live(input logic [31:0] rlo, input logic [31:0] rhi, input logic [31:0] tlo,
                                     input logic [31:0] thi, input logic ext);
        nb_live = ext ? (rlo & ENABLE) != 0 : ({rhi, rlo} != 64'd0 || {thi, tlo} != 64'd0);
    endfunction
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
    logic        tx_after;       // after this pair (re)start: TX_TAIL if entries wait

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
        if (rd_reg == R_LIVE) begin
            if (rq < NPIPES) rd_data = {31'b0, pipe_en[rq]};
            else if (rq >= 8192 && rq - 8192 < NNB) rd_data = {31'b0, nb_en[rq - 8192]};
        end else if (rq < NPIPES) begin
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
            ext_en <= 1'b0;
            tx_after <= 1'b0;
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
                    end else if (tx_after) begin
                        // A pair (re)started: serve the entries that wait for it.
                        tx_after <= 1'b0;
                        if ({n_tx_high[q - 8192], n_tx_low[q - 8192]} != 64'd0
                            && n_tx_tail[q - 8192] != n_tx_head[q - 8192]) begin
                            is_tx <= 1'b1;
                            cmd_op <= 11; cmd_q <= 32'(q) - 32'd8192; cmd_b <= n_tx_tail[q - 8192];
                            cmd_valid <= 1'b1;
                            state <= S_CMD;
                        end else state <= S_IDLE;
                    end else state <= S_IDLE;
                end
            end
            case (state)
            S_IDLE:
                if (wr_valid) begin : decode
                    logic [31:0] lo, hi, tlo, thi;
                    q <= wr_queue;
                    is_tx <= 1'b0;
                    tx_after <= 1'b0;
                    cmd_q <= wq; cmd_a <= 0; cmd_b <= wr_data; cmd_c <= 0; cmd_d <= 0;
                    if (wr_reg == R_MODE) begin
                        cmd_op <= 6; cmd_valid <= 1'b1; state <= S_CMD;
                    end else if (wr_reg == R_EXT) begin
                        ext_en <= wr_data[0];
                    end else if (wr_reg == R_STREAM) begin
                        if ({1'b0, wr_data[30:0]} < NPIPES) begin
                            cmd_op <= 7; cmd_q <= {1'b0, wr_data[30:0]}; cmd_b <= {31'b0, wr_data[31]};
                            cmd_valid <= 1'b1; state <= S_CMD;
                        end else bad_writes <= bad_writes + 1;
                    end else if (wr_reg == R_PREFETCH) begin
                        if (wr_data < NPIPES && pipe_en[wr_data]) begin
                            cmd_op <= 10; cmd_q <= wr_data; cmd_valid <= 1'b1; state <= S_CMD;
                        end else bad_writes <= bad_writes + 1;
                    end else if (wq < NPIPES) begin
                        lo = wr_reg == R_RX_MEM_LOW ? wr_data : p_rx_low[wq];
                        hi = wr_reg == R_RX_MEM_HIGH ? wr_data : p_rx_high[wq];
                        case (wr_reg)
                        R_RX_TAIL: begin
                            // The device's tail, set by software: the live pipe restarts.
                            p_rx_tail[wq] <= wr_data;
                            if (pipe_en[wq]) begin
                                cmd_op <= 1;
                                cmd_a <= pipe_base(lo, hi, ext_en);
                                cmd_b <= lo & NB_ID_MASK;
                                cmd_c <= p_rx_head[wq];
                                cmd_d <= wr_data;
                                cmd_valid <= 1'b1;
                                state <= S_CMD;
                            end
                        end
                        R_RX_HEAD: begin
                            p_rx_head[wq] <= wr_data;
                            if (pipe_en[wq]) begin
                                cmd_op <= 9; cmd_valid <= 1'b1; state <= S_CMD;
                            end
                        end
                        R_RX_MEM_LOW, R_RX_MEM_HIGH: begin
                            p_rx_low[wq] <= lo;
                            p_rx_high[wq] <= hi;
                            if (pipe_live(lo, hi, ext_en) && (lo & NB_ID_MASK) >= NNB) begin
                                // Names a pair this instance does not have.
                                bad_writes <= bad_writes + 1;
                                if (pipe_en[wq]) begin
                                    pipe_en[wq] <= 1'b0;
                                    cmd_op <= 2; cmd_valid <= 1'b1; state <= S_CMD;
                                end
                            end else if (pipe_live(lo, hi, ext_en)) begin
                                if (!pipe_en[wq]
                                    || pipe_base(lo, hi, ext_en) != pipe_base(p_rx_low[wq], p_rx_high[wq], ext_en)
                                    || (lo & NB_ID_MASK) != (p_rx_low[wq] & NB_ID_MASK)) begin
                                    pipe_en[wq] <= 1'b1;
                                    cmd_op <= 1;
                                    cmd_a <= pipe_base(lo, hi, ext_en);
                                    cmd_b <= lo & NB_ID_MASK;
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
                        lo = wr_reg == R_RX_MEM_LOW ? wr_data : n_rx_low[nb_q];
                        hi = wr_reg == R_RX_MEM_HIGH ? wr_data : n_rx_high[nb_q];
                        tlo = wr_reg == R_TX_MEM_LOW ? wr_data : n_tx_low[nb_q];
                        thi = wr_reg == R_TX_MEM_HIGH ? wr_data : n_tx_high[nb_q];
                        cmd_q <= nb_q;
                        case (wr_reg)
                        R_RX_HEAD: n_rx_head[nb_q] <= wr_data;
                        R_TX_TAIL: begin
                            n_tx_tail[nb_q] <= wr_data;
                            if (nb_en[nb_q] && {thi, tlo} != 64'd0) begin
                                is_tx <= 1'b1;
                                cmd_op <= 11; cmd_valid <= 1'b1; state <= S_CMD;
                            end
                        end
                        R_RX_TAIL, R_TX_HEAD, R_RX_MEM_LOW, R_RX_MEM_HIGH, R_TX_MEM_LOW, R_TX_MEM_HIGH: begin
                            if (wr_reg == R_RX_TAIL) n_rx_tail[nb_q] <= wr_data;
                            if (wr_reg == R_TX_HEAD) n_tx_head[nb_q] <= wr_data;
                            n_rx_low[nb_q] <= lo; n_rx_high[nb_q] <= hi;
                            n_tx_low[nb_q] <= tlo; n_tx_high[nb_q] <= thi;
                            if (nb_live(lo, hi, tlo, thi, ext_en)) begin
                                // Becomes live, moves, or (a device register written) restarts:
                                // the TX ring is latched, then the pair enabled.
                                if (!nb_en[nb_q] || wr_reg == R_RX_TAIL || wr_reg == R_TX_HEAD
                                    || rx_ring(lo, hi, ext_en) != rx_ring(n_rx_low[nb_q], n_rx_high[nb_q], ext_en)
                                    || {thi, tlo} != {n_tx_high[nb_q], n_tx_low[nb_q]}) begin
                                    nb_en[nb_q] <= 1'b1;
                                    cmd_op <= 3;
                                    cmd_a <= {thi, tlo};
                                    cmd_valid <= 1'b1;
                                    state <= S_CMD;
                                end
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
                    tx_after <= 1'b0;
                    cmd_op <= 8; cmd_q <= rx_pipe; cmd_b <= rx_len; cmd_valid <= 1'b1;
                    state <= S_CMD;
                end
            S_CMD:
                if (cmd_ready) begin
                    cmd_valid <= 1'b0;
                    state <= (cmd_op == 3) ? S_ENABLE_NB : S_WAIT;
                end
            S_ENABLE_NB:
                // NB_TX_RING is done when the engine is idle again: enable the pair, then
                // serve the TX entries that wait (tx_after).
                if (e_io_valid && e_io_kind == IO_DONE) begin
                    cmd_op <= 4;
                    tx_after <= 1'b1;
                    cmd_a <= rx_ring(n_rx_low[q - 8192], n_rx_high[q - 8192], ext_en);
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

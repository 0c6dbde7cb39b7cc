// The Ensō NIC's queue engine: per-pipe and per-notification-buffer-pair state, the
// reactive notification rule (upstream's pkt_queue_manager), the RX data and notification
// writes, the TX notification fetch, send and completion path, and prefetch. It is the RTL
// counterpart of `enso_nic::engine::BehavioralEngine`, behind the same seam
// (`enso_nic::engine::QueueEngine` / `EngineIo`), synthesizable and without vendor IP.
//
// Interfaces (all valid/ready or valid-only streams, one command in flight):
//   cmd   in   one QueueEngine call: op, queue, a (64), b, c, d (32 each)
//   io    out  one EngineIo call (DMA write/read command, publish, counter, configuration,
//              the head-refresh request) or a protocol event (entry request, TX data for the
//              framer, done with the call's result)
//   resp  in   the answer to an io event that needs one: DMA ok, or a register value
//   ent   in   one fetched TX notification (signal, address, length), after ENTRY_REQ
// The register decode of the queue pages (ENSO-INTERFACE's QueueRegs) sits before the cmd
// port, as in the emulated NIC's worker: a write of rx_mem_low enables a pipe, a write of
// rx_head is RX_HEAD, of tx_tail TX_TAIL, the prefetch doorbell PREFETCH. Frame bytes
// never enter the engine: DMA_WRITE of class data names the frame offset to copy.
//
// Commands (cmd_op): 1 ENABLE_PIPE q a=base b=nb c=head d=tail; 2 DISABLE_PIPE q;
//   3 NB_TX_RING q a=tx ring (latched for ENABLE_NB); 4 ENABLE_NB q a=rx ring b=rx_head
//   c=rx_tail d=tx_head; 5 DISABLE_NB q; 6 PER_PACKET b; 7 SET_STREAM q b; 8 RX_PACKET q
//   b=length; 9 RX_HEAD q b=head; 10 PREFETCH q; 11 TX_TAIL q b=tail.
// io events (io_kind): 1 DMA_WRITE a=addr b=len c=class d,e=content (data: frame offset;
//   notification body: pipe, tail; 8-byte word: its value) -> resp; 2 DMA_READ a b c ->
//   resp; 3 PUBLISH c=register (0 pipe rx_tail, 1 pair rx_tail, 2 pair tx_head) q b=value;
//   4 NB_RX_HEAD q -> resp value; 5 COUNT c=counter b=n; 6 CONFIGURE a=word 1 of the
//   entry; 7 ENTRY_REQ b=index -> ent; 8 TX_DATA q=pair b=length; 9 DONE b=result
//   (RX_PACKET: 0 delivered, 1 pipe disabled, 2 pipe full, 3 DMA failed; TX_TAIL: 1 when
//   caught up with the tail).
module enso_queue_engine #(
    parameter int NPIPES = 64,
    parameter int NNB = 16,
    parameter int PIPE_LOG2 = 15,      // pipe ring: 2^PIPE_LOG2 flits
    parameter int ENTRIES_LOG2 = 14,   // notification rings: 2^ENTRIES_LOG2 entries
    parameter int TX_BATCH = 256       // TX notifications handled per TX_TAIL
) (
    input  logic        clk,
    input  logic        rst,
    input  logic        cmd_valid,
    output logic        cmd_ready,
    input  logic [3:0]  cmd_op,
    input  logic [31:0] cmd_q,
    input  logic [63:0] cmd_a,
    input  logic [31:0] cmd_b,
    input  logic [31:0] cmd_c,
    input  logic [31:0] cmd_d,
`include "enso_io_ports.svh"
);
    localparam int PW = PIPE_LOG2;
    localparam int EW = ENTRIES_LOG2;
    localparam logic [31:0] PSIZE = 32'(1) << PW;
    localparam logic [31:0] ESIZE = 32'(1) << EW;
    // Counters (testbed_regs::enso::ext::counter).
    localparam logic [31:0] C_RX_NOTIFICATIONS = 4, C_TX_COMPLETIONS = 5, C_HEAD_UPDATES = 7,
        C_RX_DROP_PIPE_FULL = 8, C_RX_DROP_PIPE_DISABLED = 9, C_RX_DROP_DMA = 12,
        C_RX_NOTIF_DROP_RING_FULL = 13, C_BAD_HEAD = 14, C_TX_BAD_NOTIFICATION = 15,
        C_TX_DROP_DMA = 17, C_BAD_TAIL = 20, C_DMA_ERRORS = 21;
    localparam logic [3:0] IO_DMA_WRITE = 1, IO_DMA_READ = 2, IO_PUBLISH = 3, IO_NB_RX_HEAD = 4,
        IO_COUNT = 5, IO_CONFIGURE = 6, IO_ENTRY_REQ = 7, IO_TX_DATA = 8, IO_DONE = 9;
    localparam logic [63:0] MAX_TX_TRANSFER = 64'(128 * 1024), TX_BOUNDARY = 64'(2 * 1024 * 1024);

    // ---- state ------------------------------------------------------------------------
    logic          p_en [NPIPES];
    logic          p_out [NPIPES];     // upstream's "notification outstanding" bit
    logic          p_stream [NPIPES];
    logic [63:0]   p_base [NPIPES];
    logic [31:0]   p_nb [NPIPES];
    logic [PW-1:0] p_head [NPIPES];
    logic [PW-1:0] p_tail [NPIPES];
    logic          n_en [NNB];
    logic [63:0]   n_rx_ring [NNB];
    logic [63:0]   n_tx_ring [NNB];
    logic [63:0]   n_tx_ring_next [NNB];
    logic [EW-1:0] n_rx_tail [NNB];
    logic [31:0]   n_rx_head [NNB];   // software's rx_head as last seen (refreshed when full)
    logic [EW-1:0] n_tx_head [NNB];
    logic          per_packet;

    typedef enum logic [5:0] {
        S_IDLE, S_EMIT, S_WAIT_RESP, S_WAIT_ENT, S_DONE,
        S_RX_W1R, S_RX_W2R, S_RX_COMMIT, S_RX_NOTIFY,
        S_HEAD_CHECK, S_HEAD_EVENT,
        S_N_START, S_N_HEADR, S_N_BODY, S_N_BODYR, S_N_SIGR, S_N_CNT, S_N_END,
        S_TX_F1R, S_TX_F2R, S_TX_FETCHED, S_TX_ENT, S_TX_ENT_GOT, S_TX_SENDR, S_TX_COMPL,
        S_TX_COMPLR, S_TX_NEXT, S_TX_FINISH
    } state_t;
    state_t state, resume;
    logic [1:0] wait_for;            // after S_EMIT: 0 nothing, 1 resp, 2 ent

    // The call in hand.
    logic [31:0] q, b, done_result;
    logic [31:0] len, first;         // RX: frame bytes, bytes before the ring's end
    logic [PW-1:0] new_tail;
    logic [31:0] ntail;              // the tail a notification carries
    logic        sent;               // the notification was written
    logic [EW-1:0] next_rx;
    logic [31:0] nb;
    logic [31:0] n, i, nfirst;       // TX: entries to handle, index, entries before the wrap
    logic        fetched;
    logic        r_ok;
    logic [31:0] r_value;
    logic [63:0] e_signal, e_addr, e_len;

    // Indices of the call's queue (bounded by the range checks before any use).
    /* verilator lint_off UNUSEDSIGNAL */
    logic [31:0] pq, nq;
    /* verilator lint_on UNUSEDSIGNAL */
    assign pq = q;
    assign nq = nb;

    assign cmd_ready = (state == S_IDLE) && !rst;

    // The pair's next RX notification slot (the pair of the pipe in hand).
    logic [EW-1:0] n_rx_tail_inc;
    assign n_rx_tail_inc = n_rx_tail[p_nb[pq]] + 1'b1;

    function automatic logic [63:0] slot(input logic [63:0] ring, input logic [EW-1:0] idx);
        slot = ring + {{(64 - EW - 6){1'b0}}, idx, 6'b0};
    endfunction

    always_ff @(posedge clk) begin
        if (rst) begin
            state <= S_IDLE;
            io_valid <= 1'b0;
            per_packet <= 1'b0;
            for (int k = 0; k < NPIPES; k++) begin
                p_en[k] <= 1'b0; p_out[k] <= 1'b0; p_stream[k] <= 1'b0; p_base[k] <= '0;
                p_nb[k] <= '0; p_head[k] <= '0; p_tail[k] <= '0;
            end
            for (int k = 0; k < NNB; k++) begin
                n_en[k] <= 1'b0; n_rx_ring[k] <= '0; n_tx_ring[k] <= '0; n_tx_ring_next[k] <= '0;
                n_rx_tail[k] <= '0; n_rx_head[k] <= '0; n_tx_head[k] <= '0;
            end
        end else begin
            case (state)
            S_IDLE: if (cmd_valid) begin
                q <= cmd_q; b <= cmd_b;
                done_result <= 0;
                state <= S_DONE;
                case (cmd_op)
                4'd1: if (cmd_q < NPIPES) begin
                    p_en[cmd_q] <= 1'b1; p_out[cmd_q] <= 1'b0; p_base[cmd_q] <= cmd_a;
                    p_nb[cmd_q] <= cmd_b;
                    p_head[cmd_q] <= cmd_c < PSIZE ? cmd_c[PW-1:0] : '0;
                    p_tail[cmd_q] <= cmd_d < PSIZE ? cmd_d[PW-1:0] : '0;
                end
                4'd2: if (cmd_q < NPIPES) begin
                    // Power-on state (upstream: the queue's registers written to 0).
                    p_en[cmd_q] <= 1'b0; p_out[cmd_q] <= 1'b0; p_base[cmd_q] <= '0; p_nb[cmd_q] <= '0;
                    p_head[cmd_q] <= '0; p_tail[cmd_q] <= '0;
                end
                4'd3: if (cmd_q < NNB) n_tx_ring_next[cmd_q] <= cmd_a;
                4'd4: if (cmd_q < NNB) begin
                    n_en[cmd_q] <= 1'b1; n_rx_ring[cmd_q] <= cmd_a; n_tx_ring[cmd_q] <= n_tx_ring_next[cmd_q];
                    n_rx_head[cmd_q] <= cmd_b; n_rx_tail[cmd_q] <= cmd_c[EW-1:0];
                    n_tx_head[cmd_q] <= cmd_d[EW-1:0];
                end
                4'd5: if (cmd_q < NNB) begin
                    n_en[cmd_q] <= 1'b0; n_rx_ring[cmd_q] <= '0; n_tx_ring[cmd_q] <= '0;
                    n_rx_tail[cmd_q] <= '0; n_rx_head[cmd_q] <= '0; n_tx_head[cmd_q] <= '0;
                end
                4'd6: per_packet <= cmd_b[0];
                4'd7: if (cmd_q < NPIPES) p_stream[cmd_q] <= cmd_b[0];
                4'd8: begin
                    len <= cmd_b;
                    if (cmd_q >= NPIPES || !p_en[cmd_q]) begin
                        done_result <= 1;
                        emit(IO_COUNT, 0, 0, 1, C_RX_DROP_PIPE_DISABLED, 0, 0, 0, S_DONE);
                    end else begin : rx_room
                        logic [31:0] flits, used, room;
                        logic [PW-1:0] used_w;
                        flits = (cmd_b + 63) >> 6;
                        used_w = p_tail[cmd_q] - p_head[cmd_q];
                        used = 32'(used_w);
                        room = (PSIZE - 32'(p_tail[cmd_q])) << 6;
                        if (flits > PSIZE - used - 1) begin
                            done_result <= 2;
                            emit(IO_COUNT, 0, 0, 1, C_RX_DROP_PIPE_FULL, 0, 0, 0, S_DONE);
                        end else begin
                            first <= cmd_b < room ? cmd_b : room;
                            new_tail <= p_tail[cmd_q] + flits[PW-1:0];
                            emit(IO_DMA_WRITE, 0, p_base[cmd_q] + {p_tail[cmd_q], 6'b0},
                                 cmd_b < room ? cmd_b : room, 0, 0, 0, 1, S_RX_W1R);
                        end
                    end
                end
                4'd9: if (cmd_q < NPIPES && p_en[cmd_q])
                    emit(IO_COUNT, 0, 0, 1, C_HEAD_UPDATES, 0, 0, 0, S_HEAD_CHECK);
                4'd10: if (cmd_q < NPIPES && p_en[cmd_q]) state <= S_HEAD_EVENT;
                4'd11: begin
                    done_result <= 1;
                    nb <= cmd_q;
                    if (cmd_q < NNB && n_en[cmd_q]) begin : tx_start
                        logic [31:0] avail, cnt, before_wrap;
                        logic [EW-1:0] avail_w;
                        avail_w = cmd_b[EW-1:0] - n_tx_head[cmd_q];
                        avail = 32'(avail_w);
                        cnt = avail < TX_BATCH ? avail : TX_BATCH;
                        before_wrap = ESIZE - 32'(n_tx_head[cmd_q]);
                        if (cmd_b >= ESIZE) begin
                            emit(IO_COUNT, 0, 0, 1, C_BAD_TAIL, 0, 0, 0, S_DONE);
                        end else if (cnt != 0) begin
                            n <= cnt;
                            nfirst <= cnt < before_wrap ? cnt : before_wrap;
                            emit(IO_DMA_READ, 0, slot(n_tx_ring[cmd_q], n_tx_head[cmd_q]),
                                 (cnt < before_wrap ? cnt : before_wrap) << 6, 1, 0, 0, 1, S_TX_F1R);
                        end
                    end
                end
                default: ;
                endcase
            end

            // ---- the io handshake ---------------------------------------------------
            S_EMIT: if (io_ready) begin
                io_valid <= 1'b0;
                state <= wait_for == 1 ? S_WAIT_RESP : wait_for == 2 ? S_WAIT_ENT : resume;
            end
            S_WAIT_RESP: if (resp_valid) begin
                r_ok <= resp_ok; r_value <= resp_value; state <= resume;
            end
            S_WAIT_ENT: if (ent_valid) begin
                e_signal <= ent_signal; e_addr <= ent_addr; e_len <= ent_len; state <= resume;
            end
            S_DONE: emit(IO_DONE, 0, 0, done_result, 0, 0, 0, 0, S_IDLE);

            // ---- RX: data, tail, notification ---------------------------------------
            S_RX_W1R:
                if (!r_ok) begin
                    done_result <= 3;
                    emit(IO_COUNT, 0, 0, 1, C_RX_DROP_DMA, 0, 0, 0, S_DONE);
                end else if (first == len) state <= S_RX_COMMIT;
                else emit(IO_DMA_WRITE, 0, p_base[pq], len - first, 0, first, 0, 1, S_RX_W2R);
            S_RX_W2R:
                if (!r_ok) begin
                    done_result <= 3;
                    emit(IO_COUNT, 0, 0, 1, C_RX_DROP_DMA, 0, 0, 0, S_DONE);
                end else state <= S_RX_COMMIT;
            S_RX_COMMIT: begin
                p_tail[pq] <= new_tail;
                emit(IO_PUBLISH, q, 0, 32'(new_tail), 0, 0, 0, 0, S_RX_NOTIFY);
            end
            S_RX_NOTIFY:
                if ((per_packet || !p_out[pq]) && !p_stream[pq]) begin
                    ntail <= 32'(new_tail);
                    state <= S_N_START;
                end else state <= S_DONE;

            // ---- head writes and prefetches ----------------------------------------
            S_HEAD_CHECK: begin : head_check
                logic [PW-1:0] advance, pending;
                advance = b[PW-1:0] - p_head[pq];
                pending = p_tail[pq] - p_head[pq];
                if (b >= PSIZE || advance > pending)
                    emit(IO_COUNT, 0, 0, 1, C_BAD_HEAD, 0, 0, 0, S_DONE);
                else begin
                    p_head[pq] <= b[PW-1:0];
                    state <= S_HEAD_EVENT;
                end
            end
            S_HEAD_EVENT:
                if (p_stream[pq]) state <= S_DONE;
                else if (p_head[pq] != p_tail[pq]) begin
                    ntail <= 32'(p_tail[pq]);
                    state <= S_N_START;
                end else begin
                    p_out[pq] <= 1'b0;
                    state <= S_DONE;
                end

            // ---- one RX notification for pipe q with tail ntail ---------------------
            S_N_START: begin
                nb <= p_nb[pq];
                sent <= 1'b0;
                // Nowhere to write it: the pair is not live, or its RX ring address is 0.
                if (p_nb[pq] >= NNB || !n_en[p_nb[pq]] || n_rx_ring[p_nb[pq]] == 64'd0)
                    emit(IO_COUNT, 0, 0, 1, C_DMA_ERRORS, 0, 0, 0, S_N_END);
                else begin
                    next_rx <= n_rx_tail_inc;
                    if (32'(n_rx_tail_inc) == n_rx_head[p_nb[pq]])
                        emit(IO_NB_RX_HEAD, p_nb[pq], 0, 0, 0, 0, 0, 1, S_N_HEADR);
                    else state <= S_N_BODY;
                end
            end
            S_N_HEADR: begin
                n_rx_head[nq] <= r_value;
                if (32'(next_rx) == r_value)
                    emit(IO_COUNT, 0, 0, 1, C_RX_NOTIF_DROP_RING_FULL, 0, 0, 0, S_N_END);
                else state <= S_N_BODY;
            end
            S_N_BODY:
                emit(IO_DMA_WRITE, 0, slot(n_rx_ring[nq], n_rx_tail[nq]) + 64'd8, 56, 1, q, ntail, 1,
                     S_N_BODYR);
            S_N_BODYR:
                if (!r_ok) emit(IO_COUNT, 0, 0, 1, C_DMA_ERRORS, 0, 0, 0, S_N_END);
                else emit(IO_DMA_WRITE, 0, slot(n_rx_ring[nq], n_rx_tail[nq]), 8, 1, 1, 0, 1, S_N_SIGR);
            S_N_SIGR:
                if (!r_ok) emit(IO_COUNT, 0, 0, 1, C_DMA_ERRORS, 0, 0, 0, S_N_END);
                else begin
                    n_rx_tail[nq] <= next_rx;
                    emit(IO_PUBLISH, nb, 0, 32'(next_rx), 1, 0, 0, 0, S_N_CNT);
                end
            S_N_CNT: begin
                sent <= 1'b1;
                emit(IO_COUNT, 0, 0, 1, C_RX_NOTIFICATIONS, 0, 0, 0, S_N_END);
            end
            S_N_END: begin
                p_out[pq] <= sent;
                state <= S_DONE;
            end

            // ---- TX: fetch the entries, act on each, complete in order ---------------
            S_TX_F1R:
                if (!r_ok || nfirst == n) begin
                    fetched <= r_ok;
                    state <= S_TX_FETCHED;
                end else
                    emit(IO_DMA_READ, 0, n_tx_ring[nq], (n - nfirst) << 6, 1, 0, 0, 1, S_TX_F2R);
            S_TX_F2R: begin
                fetched <= r_ok;
                state <= S_TX_FETCHED;
            end
            S_TX_FETCHED: begin
                i <= 0;
                if (!fetched) emit(IO_COUNT, 0, 0, 1, C_DMA_ERRORS, 0, 0, 0, S_TX_FINISH);
                else state <= S_TX_ENT;
            end
            S_TX_ENT:
                if (i == n) state <= S_TX_FINISH;
                else emit(IO_ENTRY_REQ, nb, 0, i, 0, 0, 0, 2, S_TX_ENT_GOT);
            S_TX_ENT_GOT:
                if (e_signal == 64'd1) begin
                    if (e_len == 0 || e_len > MAX_TX_TRANSFER || (e_addr & (TX_BOUNDARY - 1)) + e_len > TX_BOUNDARY)
                        emit(IO_COUNT, 0, 0, 1, C_TX_BAD_NOTIFICATION, 0, 0, 0, S_TX_COMPL);
                    else emit(IO_DMA_READ, 0, e_addr, e_len[31:0], 0, 0, 0, 1, S_TX_SENDR);
                end else if (e_signal == 64'd2) emit(IO_CONFIGURE, nb, e_addr, 0, 0, 0, 0, 0, S_TX_COMPL);
                else emit(IO_COUNT, 0, 0, 1, C_TX_BAD_NOTIFICATION, 0, 0, 0, S_TX_COMPL);
            S_TX_SENDR:
                if (!r_ok) emit(IO_COUNT, 0, 0, 1, C_TX_DROP_DMA, 0, 0, 0, S_TX_COMPL);
                else emit(IO_TX_DATA, nb, 0, e_len[31:0], 0, 0, 0, 0, S_TX_COMPL);
            S_TX_COMPL:
                emit(IO_DMA_WRITE, 0, slot(n_tx_ring[nq], n_tx_head[nq] + i[EW-1:0]), 8, 1, 0, 0, 1,
                     S_TX_COMPLR);
            S_TX_COMPLR:
                emit(IO_COUNT, 0, 0, 1, r_ok ? C_TX_COMPLETIONS : C_DMA_ERRORS, 0, 0, 0, S_TX_NEXT);
            S_TX_NEXT: begin
                i <= i + 1;
                state <= S_TX_ENT;
            end
            S_TX_FINISH: begin : tx_finish
                logic [EW-1:0] head;
                head = n_tx_head[nq] + n[EW-1:0];
                n_tx_head[nq] <= head;
                done_result <= {31'b0, 32'(head) == b};
                emit(IO_PUBLISH, nb, 0, 32'(head), 2, 0, 0, 0, S_DONE);
            end
            default: state <= S_IDLE;
            endcase
        end
    end

    // Puts one event on the io port, then waits for it to be taken (and for its answer).
    task automatic emit(input logic [3:0] kind, input logic [31:0] eq, input logic [63:0] ea,
                        input logic [31:0] eb, input logic [31:0] ec, input logic [31:0] ed,
                        input logic [31:0] ee, input logic [1:0] w, input state_t after);
        io_valid <= 1'b1;
        io_kind <= kind; io_q <= eq; io_a <= ea; io_b <= eb; io_c <= ec; io_d <= ed; io_e <= ee;
        wait_for <= w;
        resume <= after;
        state <= S_EMIT;
    endtask
endmodule

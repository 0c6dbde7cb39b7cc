// Directed, self-checking bench of enso_queue_regs (and the engine behind it), with the
// card's semantics: software's register writes in upstream's order (a queue is live once its
// address is non-zero, whichever half comes first), frames, head writes, a prefetch by the
// unchanged head and by our doorbell code, a TX request, a failing DMA, a tail set by
// software, disables, bad writes, and the ENABLE-bit extension. Every event the design puts out is
// checked against the expected one, in order, and the registers software reads back are
// checked after each step.
`timescale 1ns / 1ps
module enso_queue_regs_tb;
    logic clk = 0, rst = 1;
    logic wr_valid = 0, wr_ready;
    logic [13:0] wr_queue = 0;
    logic [5:0] wr_reg = 0;
    logic [31:0] wr_data = 0;
    logic rx_valid = 0, rx_ready;
    logic [31:0] rx_pipe = 0, rx_len = 0;
    logic [13:0] rd_queue = 0;
    logic [5:0] rd_reg = 0;
    logic [31:0] rd_data;
`include "enso_io_bench.svh"
    logic [31:0] bad_writes;

    enso_queue_regs #(.NPIPES(8), .NNB(4), .PIPE_LOG2(6), .ENTRIES_LOG2(4)) dut (.*);

    always #1 clk = ~clk;

    localparam logic [31:0] ENABLE = 32'h0010_0000;
    localparam int NB1 = 8192 + 1;
    localparam logic [63:0] PIPE_BASE = 64'h1_0040_0000, RX_RING = 64'h2_0000_0000, TX_RING = 64'h2_0010_0000;

    typedef struct packed {
        io_t io;
        logic ok;          // the answer to a DMA
    } ev_t;
    ev_t expected[$];
    int seen = 0;

    always @(posedge clk) begin
        resp_valid <= 0;
        ent_valid <= 0;
        if (!rst && io_valid && io_ready) begin
            ev_t w;
            if (expected.size() == 0) $fatal(1, "unexpected event %s", show(io_now()));
            w = expected.pop_front();
            if (w.io != io_now()) $fatal(1, "event %0d: expected %s, got %s", seen, show(w.io), show(io_now()));
            seen++;
            if (io_kind == 1 || io_kind == 2) begin
                resp_ok <= w.ok;
                resp_valid <= 1;
            end
            if (io_kind == 7) give_entry($sformatf("event %0d", seen - 1));
        end
    end

    task automatic expect_ev(input logic [3:0] kind, input logic [31:0] q, input logic [63:0] a, input logic [31:0] b,
                             input logic [31:0] c, input logic [31:0] d = 0, input logic [31:0] e = 0,
                             input logic ok = 1);
        ev_t x;
        x.io = '{kind, q, a, b, c, d, e};
        x.ok = ok;
        expected.push_back(x);
    endtask

    // A frame of `len` bytes written at `addr` of pipe `pipe`, the pipe's tail published.
    task automatic expect_frame(input logic [63:0] addr, input int len, input int pipe, input int tail);
        expect_ev(1, 0, addr, len, 0, 0, 0);
        expect_ev(3, pipe, 0, tail, 0);
    endtask

    // Pipe `pipe`'s notification of `tail` in pair 1's slot `n - 1`: the body, the signal,
    // the pair's tail `n` published, counted.
    task automatic expect_notification(input int pipe, input int tail, input int n);
        expect_ev(1, 0, RX_RING + 64 * (n - 1) + 8, 56, 1, pipe, tail);
        expect_ev(1, 0, RX_RING + 64 * (n - 1), 8, 1, 1, 0);
        expect_ev(3, 1, 0, n, 1);
        expect_count(4);
    endtask

    task automatic expect_count(input int counter);
        expect_ev(5, 0, 0, 1, counter);
    endtask

    task automatic write(input int q, input logic [5:0] r, input logic [31:0] v);
        @(negedge clk);
        while (!wr_ready) @(negedge clk);
        wr_valid = 1; wr_queue = 14'(q); wr_reg = r; wr_data = v;
        @(negedge clk);
        wr_valid = 0;
    endtask

    task automatic packet(input int pipe, input int len);
        @(negedge clk);
        while (!rx_ready) @(negedge clk);
        rx_valid = 1; rx_pipe = pipe; rx_len = len;
        @(negedge clk);
        rx_valid = 0;
    endtask

    // Waits until every expected event came and the design is idle again.
    task automatic settle(input string step);
        int n = 0;
        @(negedge clk);
        while (expected.size() != 0 || !wr_ready) begin
            @(negedge clk);
            n++;
            if (n > 2000) $fatal(1, "%s: %0d expected events never came", step, expected.size());
        end
        repeat (4) @(negedge clk);
        if (expected.size() != 0) $fatal(1, "%s: events missing", step);
        $display("ok: %s", step);
    endtask

    task automatic check_reg(input int q, input logic [5:0] r, input logic [31:0] want, input string what);
        rd_queue = 14'(q); rd_reg = r;
        #0.1;
        if (rd_data !== want) $fatal(1, "%s: read %0h, expected %0h", what, rd_data, want);
    endtask

    initial begin
        repeat (3) @(posedge clk);
        rst = 0;

        // Pipe 3 -> pair 1, set up as upstream's library does: tail and head, then the low
        // half (address + pair ID: live at once, at the half-written address), then the
        // high half (the pipe moves to the full address).
        write(3, 6'h00, 0);
        write(3, 6'h04, 0);
        write(3, 6'h08, 32'h0040_0000 | 1);
        check_reg(3, 6'h30, 1, "pipe 3 live from its low half");
        write(3, 6'h0c, 32'h1);
        // Pair 1: rx_mem_low (0: the ring's low half), rx_mem_high, tx_mem_low, tx_mem_high.
        write(NB1, 6'h00, 0);
        write(NB1, 6'h04, 0);
        write(NB1, 6'h08, 0);
        check_reg(NB1, 6'h30, 0, "pair 1 not live at address 0");
        write(NB1, 6'h0c, 32'h2);
        write(NB1, 6'h18, 32'h0010_0000);
        write(NB1, 6'h1c, 32'h2);
        settle("pipe 3 and pair 1 live by their addresses, in upstream's order");
        check_reg(NB1, 6'h30, 1, "pair 1 live");

        // A 100-byte frame: the data, the tail, a notification (body, then signal).
        expect_frame(PIPE_BASE, 100, 3, 2);
        expect_notification(3, 2, 1);
        packet(3, 100);
        settle("a frame is written and notified");
        check_reg(3, 6'h00, 2, "pipe 3 rx_tail");
        check_reg(NB1, 6'h00, 1, "pair 1 rx_tail");

        // A second frame: no notification while one is outstanding (reactive rule).
        expect_frame(PIPE_BASE + 128, 64, 3, 3);
        packet(3, 64);
        settle("the second frame waits for software (one notification outstanding)");

        // Software consumed the first: the head write brings the next notification.
        expect_count(7);
        expect_notification(3, 3, 2);
        write(3, 6'h04, 2);
        settle("a head write with data left notifies with the tail");

        // A head past the tail is refused and counted.
        expect_count(7);
        expect_count(14);
        write(3, 6'h04, 40);
        settle("a bad head is counted");

        // Caught up: no notification; prefetch with nothing new sends none either.
        expect_count(7);
        write(3, 6'h04, 3);
        write(0, 6'h20, 3);
        settle("caught up: the head write and the prefetch notify nothing");
        write(0, 6'h20, 5);
        settle("prefetch of a disabled pipe");
        if (bad_writes != 1) $fatal(1, "bad_writes %0d, expected 1", bad_writes);

        // One TX request: fetch, entry, data read, framer, completion, tx_head.
        entries.push_back({64'd1, 64'h3_0000_0000, 64'd128});
        expect_ev(2, 0, TX_RING, 64, 1);
        expect_ev(7, 1, 0, 0, 0);
        expect_ev(2, 0, 64'h3_0000_0000, 128, 0);
        expect_ev(8, 1, 0, 128, 0);
        expect_ev(1, 0, TX_RING, 8, 1, 0, 0);
        expect_count(5);
        expect_ev(3, 1, 0, 1, 2);
        write(NB1, 6'h10, 1);
        settle("a TX request is fetched, read, framed and completed");
        check_reg(NB1, 6'h14, 1, "pair 1 tx_head");

        // A data DMA that fails drops the frame (counted), the tail unchanged.
        expect_ev(1, 0, PIPE_BASE + 192, 60, 0, 0, 0, 0);
        expect_count(12);
        packet(3, 60);
        settle("a failed DMA drops the frame");
        check_reg(3, 6'h00, 3, "pipe 3 rx_tail after the failed DMA");

        // The card's prefetch: with a notification outstanding and data behind it, a write
        // of the unchanged head notifies with the current tail.
        expect_frame(PIPE_BASE + 192, 64, 3, 4);
        expect_notification(3, 4, 3);
        packet(3, 64);
        expect_frame(PIPE_BASE + 256, 64, 3, 5);
        packet(3, 64);
        settle("one notification outstanding, data behind it");
        expect_count(7);
        expect_notification(3, 5, 4);
        write(3, 6'h04, 3);
        settle("a same-value head write is a prefetch");

        // Software sets the device's tail (a register the device owns): the pipe restarts
        // there and the next frame lands at flit 8.
        expect_count(7);
        write(3, 6'h04, 5);
        write(3, 6'h00, 8);
        settle("caught up, then the tail set by software");
        check_reg(3, 6'h00, 8, "pipe 3 rx_tail as software set it");
        expect_frame(PIPE_BASE + 512, 64, 3, 9);
        expect_notification(3, 9, 5);
        packet(3, 64);
        settle("the next frame lands at the tail software set");

        // Only the low half cleared: the address is still non-zero, the pipe moves there
        // (the card would DMA to it); both halves cleared: it stops, frames are dropped.
        write(3, 6'h08, 0);
        check_reg(3, 6'h30, 1, "pipe 3 still live on its high half");
        write(3, 6'h0c, 0);
        check_reg(3, 6'h30, 0, "pipe 3 stopped");
        expect_count(9);
        packet(3, 80);
        settle("a stopped pipe drops frames");

        // A pipe naming a pair that does not exist is refused.
        write(4, 6'h08, 32'h0040_0000 | 7);
        expect_count(9);
        packet(4, 80);
        settle("an enable naming a missing pair is refused");
        if (bad_writes != 2) $fatal(1, "bad_writes %0d, expected 2", bad_writes);

        // The ENABLE-bit extension: bit 20 enables and is not an address bit.
        write(0, 6'h2c, 1);
        write(5, 6'h0c, 32'h1);
        write(5, 6'h08, 32'h0040_0000 | 1);
        check_reg(5, 6'h30, 0, "without bit 20 the pipe is not live under the extension");
        write(5, 6'h08, 32'h0040_0000 | ENABLE | 1);
        expect_frame(PIPE_BASE, 64, 5, 1);
        expect_notification(5, 1, 6);
        packet(5, 64);
        settle("the ENABLE-bit extension");

        $display("enso_queue_regs: PASS, %0d events checked", seen);
        $finish;
    end
endmodule

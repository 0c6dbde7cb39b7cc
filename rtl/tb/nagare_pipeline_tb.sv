// Self-checking bench of nagare_pipeline: directed cases for every stage, then random
// TLP headers against a reference written from the Rust model's rules
// (devices/nagare/src/pipeline.rs). Every verdict must match, and must leave after
// exactly STAGES cycles. Exits non-zero (via $fatal) on the first mismatch.
`timescale 1ns / 1ps
module nagare_pipeline_tb;
`include "nagare_pipeline_bench.svh"
    localparam longint BASE = 64'h40_0000_0000;

    // ---- the reference (the Rust model's rules) ---------------------------------------
    logic        r_open [STREAMS];
    logic [31:0] r_acl [STREAMS];
    int          r_hops [STREAMS];
    int          r_port [STREAMS][MAX_HOPS];
    int          r_kind [STREAMS][MAX_HOPS];
    int          r_pipe [STREAMS][MAX_HOPS];
    int          r_win [8];

    function automatic ruling_t reference(int src, longint addr, int len);
        ruling_t e = '0;
        longint rel = addr - BASE;
        int s, off, last, node;
        bit found = 0;
        if (addr < BASE || rel >= longint'(STREAMS) * 2097152 || rel + len > longint'(STREAMS) * 2097152) begin
            e.verdict = 0;
            return e;
        end
        s = int'(rel / 2097152);
        off = int'(rel % 2097152);
        e.stream = 4'(s);
        if (!r_open[s]) begin e.verdict = 2; e.reason = 9; return e; end
        if (!r_acl[s][src]) begin e.verdict = 2; e.reason = 8; return e; end
        last = r_hops[s] - 1;
        if (r_hops[s] >= 2) begin
            if (src == 0) begin found = 1; node = 0; end
            else for (int h = 0; h < last && !found; h++) if (r_port[s][h] == src) begin found = 1; node = h; end
        end
        if (!found) begin e.verdict = 2; e.reason = 9; return e; end
        e.dest_port = 4'(r_port[s][node + 1]);
        e.egress = (node + 1 == last);
        if (r_kind[s][node + 1] == 4) begin
            e.glue = 1;
            e.dest_offset = 21'(off % 65536);
        end else if (r_win[r_port[s][node + 1]] == 0) begin
            e.verdict = 2; e.reason = 9; return e;
        end else e.dest_offset = 21'(off % (1 << r_win[r_port[s][node + 1]]));
        e.verdict = 1;
        if (node == 0 && src != 0 && r_kind[s][0] == 1 && r_port[s][0] == src) begin
            e.credit = 1;
            e.credit_pipe = 16'(r_pipe[s][0]);
            e.credit_head = 15'(((off + len + 63) / 64) % 32768);
        end
        return e;
    endfunction

    task automatic node(input int s, input int h, input int port, input int kind, input int pipe);
        cfg(32'h110 + 64 * s + 4 * h, port | (kind << 4) | (pipe << 16));
        r_port[s][h] = port;
        r_kind[s][h] = kind;
        r_pipe[s][h] = pipe;
    endtask

    task automatic stream(input int s, input int open, input int acl, input int hops);
        cfg(32'h100 + 64 * s + 8, hops);
        cfg(32'h100 + 64 * s + 4, acl);
        cfg(32'h100 + 64 * s, open);
        r_hops[s] = hops;
        r_acl[s] = acl;
        r_open[s] = open[0];
    endtask

    task automatic send(input int src, input longint addr, input int len);
        send_header(src, addr, len, reference(src, addr, len));
        @(negedge clk);
        in_valid = 0;
    endtask

    // Back-to-back TLPs, one per cycle.
    task automatic burst(input int n, input int seed);
        int x = seed;
        for (int i = 0; i < n; i++) begin
            int src, s, len;
            longint addr;
            x = x * 1103515245 + 12345;
            src = (x >>> 8) & 7;
            x = x * 1103515245 + 12345;
            s = (x >>> 8) % (STREAMS + 2);
            x = x * 1103515245 + 12345;
            len = 1 + ((x >>> 8) & 2047);
            x = x * 1103515245 + 12345;
            addr = BASE + longint'(s) * 2097152 + ((x >>> 4) & 32'h1f_ffff);
            if (((x >>> 20) & 15) == 0) addr = 64'h1000 + (x & 16'hffff);
            send_header(src, addr, len, reference(src, addr, len));
        end
    endtask

    initial begin
        for (int s = 0; s < STREAMS; s++) begin r_open[s] = 0; r_acl[s] = 0; r_hops[s] = 0; end
        for (int p = 0; p < 8; p++) r_win[p] = 0;
        repeat (3) @(negedge clk);
        rst = 0;
        cfg(32'h000, int'(BASE[31:0]));
        cfg(32'h004, int'(BASE[63:32]));
        // Ports: 1 NIC (TX window 32 KiB), 2 crypto, 3 ML (64 KiB windows), 4 legacy.
        cfg(32'h040 + 4 * 1, 15); r_win[1] = 15;
        cfg(32'h040 + 4 * 2, 16); r_win[2] = 16;
        cfg(32'h040 + 4 * 3, 16); r_win[3] = 16;
        // Stream 0: NIC pipe 7 -> crypto -> ML -> NIC; stream 1: NIC -> legacy (glue) -> NIC.
        node(0, 0, 1, 1, 7); node(0, 1, 2, 2, 0); node(0, 2, 3, 2, 0); node(0, 3, 1, 3, 0);
        stream(0, 1, 32'b1110, 4);
        node(1, 0, 1, 1, 9); node(1, 1, 4, 4, 0); node(1, 2, 1, 3, 0);
        stream(1, 1, 32'b10011, 3);
        // Directed: each stage once.
        send(1, BASE + 64'h1_0040, 824);   // NIC -> crypto, offset mod 64 KiB, credit
        send(2, BASE + 64'h40, 824);       // crypto -> ML
        send(3, BASE, 84);                 // ML -> NIC egress
        send(1, 64'h1000, 64);             // not a stream write: memory
        send(1, BASE + 64'h60_0000, 8);    // stream 3 closed: no route
        send(3, BASE + 64'h20_0000, 8);    // stream 1: ML not allowed
        send(0, BASE, 100);                // CPU: not on stream 0's list
        send(0, BASE + 64'h20_0040, 100);  // CPU on stream 1: enters at the ingress -> glue
        send(1, BASE + 64'h20_0000, 900);  // NIC -> glued device, credit for pipe 9
        send(4, BASE + 64'h20_1000, 100);  // glued device -> egress
        repeat (STAGES + 4) @(negedge clk);
        // Random, back to back.
        burst(100000, 7);
        drain();
        $display("nagare_pipeline: %0d TLP verdicts match the reference", checked);
        $finish;
    end
endmodule

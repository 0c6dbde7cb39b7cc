// Differential bench of enso_queue_engine against the Rust model's engine
// (enso_nic::engine::BehavioralEngine): replays the calls that
// `cargo run -p enso-nic --example engine_vectors` writes, answers the RTL's requests (DMA
// results, register values, fetched TX entries) with the answers the model got, and checks
// every event the RTL puts on its io port against the model's, in order. The first
// difference is printed with the call it belongs to, and the bench fails. Needs
// +vectors=FILE.
`timescale 1ns / 1ps
module enso_queue_engine_diff_tb;
    logic clk = 0, rst = 1;
    logic cmd_valid = 0, cmd_ready;
    logic [3:0] cmd_op = 0;
    logic [31:0] cmd_q = 0, cmd_b = 0, cmd_c = 0, cmd_d = 0;
    logic [63:0] cmd_a = 0;
`include "enso_io_bench.svh"

    enso_queue_engine #(.NPIPES(8), .NNB(4), .PIPE_LOG2(6), .ENTRIES_LOG2(4), .TX_BATCH(256)) dut (.*);

    always #1 clk = ~clk;

    typedef struct packed {
        logic [31:0] call;
        io_t io;
    } event_t;
    typedef struct packed {
        logic [3:0] op;
        logic [31:0] q;
        logic [63:0] a;
        logic [31:0] b, c, d;
    } call_t;

    call_t calls[$];
    string call_text[$];
    event_t expected[$];
    logic [32:0] answers[$];            // {ok, value}
    int next_call = 0, done_calls = 0, checked = 0;
    logic busy = 0;
    logic [32:0] ans_tmp;

    initial begin
        string path, line;
        int fd, n;
        logic [63:0] f[7];
        string tag;
        if (!$value$plusargs("vectors=%s", path)) $fatal(1, "usage: +vectors=FILE");
        fd = $fopen(path, "r");
        if (fd == 0) $fatal(1, "cannot open %s", path);
        while ($fgets(line, fd)) begin
            if (line.len() < 2) continue;
            tag = line.substr(0, 0);
            if (tag == "C") begin
                call_t c;
                n = $sscanf(line, "C %h %h %h %h %h %h", f[0], f[1], f[2], f[3], f[4], f[5]);
                c.op = f[0][3:0]; c.q = f[1][31:0]; c.a = f[2]; c.b = f[3][31:0]; c.c = f[4][31:0];
                c.d = f[5][31:0];
                calls.push_back(c);
                call_text.push_back(line);
            end else if (tag == "O") begin
                event_t e;
                n = $sscanf(line, "O %h %h %h %h %h %h %h", f[0], f[1], f[2], f[3], f[4], f[5], f[6]);
                e.call = calls.size() - 1;
                e.io = '{f[0][3:0], f[1][31:0], f[2], f[3][31:0], f[4][31:0], f[5][31:0], f[6][31:0]};
                expected.push_back(e);
            end else if (tag == "R") begin
                n = $sscanf(line, "R %h %h", f[0], f[1]);
                answers.push_back({f[0][0], f[1][31:0]});
            end else if (tag == "E") begin
                n = $sscanf(line, "E %h %h %h", f[0], f[1], f[2]);
                entries.push_back({f[0], f[1], f[2]});
            end
        end
        $fclose(fd);
        $display("enso_queue_engine_diff_tb: %0d calls, %0d events, %0d answers, %0d TX entries from %s",
                 calls.size(), expected.size(), answers.size(), entries.size(), path);
        repeat (3) @(posedge clk);
        rst = 0;
    end

    // Calls, one at a time: the next once the RTL reported the last one done.
    always @(posedge clk) begin
        if (!rst) begin
            if (cmd_valid && cmd_ready) cmd_valid <= 0;
            else if (!cmd_valid && !busy && next_call < calls.size()) begin
                call_t c = calls[next_call];
                cmd_op <= c.op; cmd_q <= c.q; cmd_a <= c.a; cmd_b <= c.b; cmd_c <= c.c; cmd_d <= c.d;
                cmd_valid <= 1;
                busy <= 1;
                next_call <= next_call + 1;
            end
        end
    end

    // Events: compared with the model's; requests answered with the model's answers.
    always @(posedge clk) begin
        resp_valid <= 0;
        ent_valid <= 0;
        if (!rst && io_valid && io_ready) begin
            if (io_kind == 4'd7) begin : entry_req
                // Entry request: a protocol event (the model acts on its fetch buffer).
                give_entry($sformatf("call %0d: %s", next_call - 1, call_text[next_call - 1]));
            end else begin
                event_t got, want;
                got.call = next_call - 1;
                got.io = io_now();
                if (expected.size() == 0) $fatal(1, "RTL event after the model's last: %s", show(got.io));
                want = expected.pop_front();
                if (want != got) begin
                    $display("FIRST DIFFERENCE after %0d identical events, in call %0d: %s", checked, got.call,
                             call_text[got.call]);
                    $display("  model: %s (call %0d)", show(want.io), want.call);
                    $display("  RTL:   %s", show(got.io));
                    $fatal(1, "enso_queue_engine differs from the Rust model");
                end
                checked++;
                if (io_kind == 4'd1 || io_kind == 4'd2 || io_kind == 4'd4) begin : answer
                    if (answers.size() == 0) $fatal(1, "no answer left for %s", show(got.io));
                    ans_tmp = answers.pop_front();
                    {resp_ok, resp_value} <= ans_tmp;
                    resp_valid <= 1;
                end
                if (io_kind == 4'd9) begin
                    busy <= 0;
                    done_calls++;
                    if (done_calls == calls.size()) begin
                        if (expected.size() != 0 || answers.size() != 0 || entries.size() != 0)
                            $fatal(1, "the model did more: %0d events, %0d answers, %0d entries left",
                                   expected.size(), answers.size(), entries.size());
                        $display("enso_queue_engine_diff_tb: PASS, %0d calls, %0d events identical to the Rust model",
                                 done_calls, checked);
                        $finish;
                    end
                end
            end
        end
    end

    // A stuck engine (no event for 10 000 cycles) fails the bench.
    int quiet = 0;
    always @(posedge clk) begin
        quiet <= (io_valid || rst) ? 0 : quiet + 1;
        if (quiet > 10000) $fatal(1, "the RTL is stuck after %0d calls, %0d events (call %0d: %s)",
                                  done_calls, checked, next_call - 1, call_text[next_call - 1]);
    end
endmodule

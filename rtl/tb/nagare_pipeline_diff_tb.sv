// Differential bench of nagare_pipeline against the Rust model: replays the vectors that
// `cargo run -p nagare --example vectors` writes (the configuration as register writes,
// then TLP headers with the verdict the Rust pipeline gave each) and checks that the RTL
// gives every header the same verdict, destination, egress, glue and credit. The first
// difference is printed, and the bench fails. Needs +vectors=FILE.
`timescale 1ns / 1ps
module nagare_pipeline_diff_tb;
`include "nagare_pipeline_bench.svh"

    initial begin
        string path, line;
        int fd, n, headers = 0;
        if (!$value$plusargs("vectors=%s", path)) $fatal(1, "no +vectors=FILE given");
        fd = $fopen(path, "r");
        if (fd == 0) $fatal(1, "cannot open %s", path);
        repeat (3) @(negedge clk);
        rst = 0;
        while ($fgets(line, fd) != 0) begin
            int a, d, src, len, verdict, reason, dport, egress, glue, credit, cpipe, chead;
            longint addr, doff;
            if (line.substr(0, 0) == "C") begin
                n = $sscanf(line, "C %h %h", a, d);
                if (n != 2) $fatal(1, "bad line: %s", line);
                cfg(a, d);
            end else if (line.substr(0, 0) == "T") begin
                ruling_t e;
                n = $sscanf(line, "T %d %h %d %d %d %d %h %d %d %d %d %d", src, addr, len, verdict, reason,
                            dport, doff, egress, glue, credit, cpipe, chead);
                if (n != 12) $fatal(1, "bad line (%0d fields): %s", n, line);
                e.verdict = 2'(verdict);
                e.reason = 4'(reason);
                e.dest_port = 4'(dport);
                e.dest_offset = 21'(doff);
                e.egress = egress[0];
                e.glue = glue[0];
                e.credit = credit[0];
                e.credit_pipe = 16'(cpipe);
                e.credit_head = 15'(chead);
                send_header(src, addr, len, e);
                headers++;
            end
        end
        drain();
        if (headers == 0) $fatal(1, "no headers in %s", path);
        $display("nagare_pipeline: the RTL agrees with the Rust model on all %0d headers", checked);
        $finish;
    end
endmodule

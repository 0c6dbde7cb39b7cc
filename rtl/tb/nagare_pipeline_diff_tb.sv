// Differential bench of nagare_pipeline against the Rust model: replays the vectors that
// `cargo run -p nagare --example vectors` writes (the configuration as register writes,
// then TLP headers with the verdict the Rust pipeline gave each) and checks that the RTL
// gives every header the same verdict, destination, egress, glue and credit. The first
// difference is printed, and the bench fails. Needs +vectors=FILE.
`timescale 1ns / 1ps
module nagare_pipeline_diff_tb;
    localparam int STAGES = 10;
    logic clk = 0, rst = 1;
    logic cfg_we = 0;
    logic [11:0] cfg_addr = 0;
    logic [31:0] cfg_wdata = 0;
    logic in_valid = 0;
    logic [3:0] in_src = 0;
    logic [63:0] in_addr = 0;
    logic [15:0] in_len = 0;
    logic out_valid, out_egress, out_glue, out_credit;
    logic [1:0] out_verdict;
    logic [3:0] out_reason, out_stream, out_dest_port;
    logic [20:0] out_dest_offset;
    logic [15:0] out_credit_pipe;
    logic [14:0] out_credit_head;

    nagare_pipeline #(.STREAMS(8), .MAX_HOPS(6), .PORTS(8), .STAGES(STAGES)) dut (.*);

    always #1 clk = ~clk;

    typedef struct packed {
        logic [1:0]  verdict;
        logic [3:0]  reason;
        logic [3:0]  dest_port;
        logic [20:0] dest_offset;
        logic        egress;
        logic        glue;
        logic        credit;
        logic [15:0] credit_pipe;
        logic [14:0] credit_head;
        logic [63:0] addr;
    } expect_t;

    expect_t queue[$];
    int checked = 0;

    always @(negedge clk) begin
        if (!rst && out_valid) begin
            expect_t e = queue.pop_front();
            if (out_verdict != e.verdict || (e.verdict == 2 && out_reason != e.reason)
                || (e.verdict == 1 && (out_dest_port != e.dest_port || out_dest_offset != e.dest_offset
                    || out_egress != e.egress || out_glue != e.glue || out_credit != e.credit
                    || (e.credit && (out_credit_pipe != e.credit_pipe || out_credit_head != e.credit_head)))))
                $fatal(1, "header %0d (address %0h): RTL verdict %0d reason %0d port %0d offset %0h egress %0d glue %0d credit %0d/%0d/%0d; the Rust model: %0d %0d %0d %0h %0d %0d %0d/%0d/%0d",
                       checked, e.addr, out_verdict, out_reason, out_dest_port, out_dest_offset, out_egress,
                       out_glue, out_credit, out_credit_pipe, out_credit_head, e.verdict, e.reason,
                       e.dest_port, e.dest_offset, e.egress, e.glue, e.credit, e.credit_pipe, e.credit_head);
            checked++;
        end
    end

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
                @(negedge clk);
                cfg_we = 1;
                cfg_addr = 12'(a);
                cfg_wdata = d;
                @(negedge clk);
                cfg_we = 0;
            end else if (line.substr(0, 0) == "T") begin
                expect_t e;
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
                e.addr = addr;
                @(negedge clk);
                in_valid = 1;
                in_src = 4'(src);
                in_addr = addr;
                in_len = 16'(len);
                queue.push_back(e);
                headers++;
            end
        end
        @(negedge clk);
        in_valid = 0;
        repeat (STAGES + 4) @(negedge clk);
        if (queue.size() != 0) $fatal(1, "%0d verdicts never came out", queue.size());
        if (headers == 0) $fatal(1, "no headers in %s", path);
        $display("nagare_pipeline: the RTL agrees with the Rust model on all %0d headers", checked);
        $finish;
    end
endmodule

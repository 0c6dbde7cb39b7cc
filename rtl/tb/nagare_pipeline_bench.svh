// What the benches of nagare_pipeline share, `included in each bench module: the pins and
// the design under test (the switch's sizes), the clock, the ruling a header must get and
// its check at the output (the verdict, and for a drop its reason, for a forward its
// destination, egress, glue and credit), each ruling exactly STAGES + 1 cycles after its
// header went in, and the configuration and header writes.
    localparam int STAGES = 10;
    localparam int STREAMS = 8;
    localparam int MAX_HOPS = 6;

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

    nagare_pipeline #(.STREAMS(STREAMS), .MAX_HOPS(MAX_HOPS), .PORTS(8), .STAGES(STAGES)) dut (.*);

    always #1 clk = ~clk;

    typedef struct packed {
        logic [1:0]  verdict;
        logic [3:0]  reason;
        logic [3:0]  stream;
        logic [3:0]  dest_port;
        logic [20:0] dest_offset;
        logic        egress;
        logic        glue;
        logic        credit;
        logic [15:0] credit_pipe;
        logic [14:0] credit_head;
    } ruling_t;

    function automatic string show(ruling_t r);
        return $sformatf("verdict %0d reason %0d port %0d offset %0h egress %0d glue %0d credit %0d/%0d/%0d",
                         r.verdict, r.reason, r.dest_port, r.dest_offset, r.egress, r.glue, r.credit,
                         r.credit_pipe, r.credit_head);
    endfunction

    // Headers in flight, in order: the ruling each must get, its address, when it went in.
    ruling_t expected[$];
    longint sent_addr[$];
    int sent_at[$];
    int cycle = 0;
    int checked = 0;

    always @(posedge clk) cycle <= cycle + 1;

    always @(negedge clk) begin
        if (!rst && out_valid) begin
            ruling_t e = expected.pop_front();
            ruling_t got = '{out_verdict, out_reason, out_stream, out_dest_port, out_dest_offset, out_egress,
                             out_glue, out_credit, out_credit_pipe, out_credit_head};
            longint addr = sent_addr.pop_front();
            int t = sent_at.pop_front();
            if (cycle - t != STAGES + 1)
                $fatal(1, "latency %0d cycles, expected %0d", cycle - t, STAGES + 1);
            if (got.verdict != e.verdict || (e.verdict == 2 && got.reason != e.reason)
                || (e.verdict == 1 && (got.dest_port != e.dest_port || got.dest_offset != e.dest_offset
                    || got.egress != e.egress || got.glue != e.glue || got.credit != e.credit
                    || (e.credit && (got.credit_pipe != e.credit_pipe || got.credit_head != e.credit_head)))))
                $fatal(1, "header %0d (address %0h): the RTL's %s; expected %s", checked, addr, show(got), show(e));
            checked++;
        end
    end

    // One configuration register write.
    task automatic cfg(input int addr, input int data);
        @(negedge clk);
        cfg_we = 1;
        cfg_addr = 12'(addr);
        cfg_wdata = data;
        @(negedge clk);
        cfg_we = 0;
    endtask

    // A header in at the next falling edge, to get ruling `e` (in_valid stays set: the next
    // header follows back to back, or the caller ends the run).
    task automatic send_header(input int src, input longint addr, input int len, input ruling_t e);
        @(negedge clk);
        in_valid = 1;
        in_src = 4'(src);
        in_addr = addr;
        in_len = 16'(len);
        expected.push_back(e);
        sent_addr.push_back(addr);
        sent_at.push_back(cycle);
    endtask

    // Ends a run of headers, then waits for every ruling to come out.
    task automatic drain();
        @(negedge clk);
        in_valid = 0;
        repeat (STAGES + 4) @(negedge clk);
        if (expected.size() != 0) $fatal(1, "%0d verdicts never came out", expected.size());
    endtask

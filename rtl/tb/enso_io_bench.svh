// What the benches of enso_queue_engine and enso_queue_regs share, `included in each bench
// module: the engine's io port, the answers the bench drives into it (io_ready held high),
// an io event as a record and as text, and the TX entries that answer ENTRY_REQ.
    logic io_valid;
    logic io_ready = 1;
    logic [3:0] io_kind;
    logic [31:0] io_q, io_b, io_c, io_d, io_e;
    logic [63:0] io_a;
    logic resp_valid = 0, resp_ok = 0;
    logic [31:0] resp_value = 0;
    logic ent_valid = 0;
    logic [63:0] ent_signal = 0, ent_addr = 0, ent_len = 0;

    typedef struct packed {
        logic [3:0] kind;
        logic [31:0] q;
        logic [63:0] a;
        logic [31:0] b, c, d, e;
    } io_t;

    // The event on the io port now.
    function automatic io_t io_now();
        return '{io_kind, io_q, io_a, io_b, io_c, io_d, io_e};
    endfunction

    function automatic string show(io_t e);
        return $sformatf("kind %0d q %0h a %0h b %0h c %0h d %0h e %0h", e.kind, e.q, e.a, e.b, e.c, e.d, e.e);
    endfunction

    // Fetched TX entries, {signal, addr, len}, handed out in order for ENTRY_REQ.
    logic [191:0] entries[$];
    logic [191:0] ent_tmp;

    // Answers an ENTRY_REQ with the next fetched entry (from a clocked block); `where`
    // says which request, should there be none.
    task automatic give_entry(input string where);
        if (entries.size() == 0) $fatal(1, "the RTL asked for a TX entry none was fetched for (%s)", where);
        ent_tmp = entries.pop_front();
        {ent_signal, ent_addr, ent_len} <= ent_tmp;
        ent_valid <= 1;
    endtask

// The engine's event/answer port group, `included in the port lists of enso_queue_engine and
// enso_queue_regs (see the protocol at the top of enso_queue_engine.sv): io_* out, one
// EngineIo call or protocol event (valid/ready); resp_* in, the answer to an io event that
// needs one (DMA ok, or a register value); ent_* in, one fetched TX notification after
// ENTRY_REQ. The last port has no comma: the include closes its module's port list.
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
    input  logic [63:0] ent_len

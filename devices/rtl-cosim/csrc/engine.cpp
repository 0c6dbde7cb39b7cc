// C ABI over the verilated instances (the queue engine at two sizes, its register front
// end, the Nagare pipeline): create, one clock cycle with the pins, destroy. The Rust side
// (src/lib.rs, src/model.rs) owns the protocol; this file only moves pins.
#include <cstdint>
#include "Venso_queue_engine.h"
#include "Venso_queue_engine_small.h"
#include "Venso_queue_regs.h"
#include "Vnagare_pipeline.h"
#include "verilated.h"

extern "C" {

// The answers to the engine's io events: the same inputs on the engine and on its
// register front end. Must match `Answers` in src/lib.rs (repr(C)).
struct Answers {
    uint64_t ent_signal, ent_addr, ent_len;
    uint32_t resp_value;
    uint8_t io_ready, resp_valid, resp_ok, ent_valid;
};

// The engine's io port (outputs), on the engine and on its front end. Must match `Event`
// in src/lib.rs.
struct IoPort {
    uint64_t a;
    uint32_t q, b, c, d, e;
    uint8_t valid, kind;
};

// The queue engine. Must match `Pins` in src/lib.rs.
struct EqePins {
    Answers ans;
    uint64_t cmd_a;
    uint32_t cmd_q, cmd_b, cmd_c, cmd_d;
    uint8_t rst, cmd_valid, cmd_op;
    // Outputs.
    uint8_t cmd_ready;
    IoPort io;
};

// The register front end with the engine behind it. Must match `RegsPins` in src/lib.rs.
struct EqrPins {
    Answers ans;
    uint32_t wr_data, rx_pipe, rx_len;
    // Outputs.
    uint32_t rd_data, bad_writes;
    // Inputs.
    uint16_t wr_queue, rd_queue;
    uint8_t rst, wr_valid, wr_reg, rx_valid, rd_reg;
    // Outputs.
    uint8_t wr_ready, rx_ready;
    IoPort io;
};

// The Nagare match-action pipeline. Must match `Pins` in src/lib.rs's pipeline module.
struct NplPins {
    uint64_t in_addr;
    uint32_t cfg_wdata;
    uint16_t cfg_addr, in_len;
    uint8_t rst, cfg_we, in_valid, in_src;
    // Outputs.
    uint32_t out_dest_offset;
    uint16_t out_credit_pipe, out_credit_head;
    uint8_t out_valid, out_verdict, out_reason, out_stream, out_dest_port, out_egress, out_glue, out_credit;
};

}  // extern "C"

// The answers and the io port, for any top that has them.
template <class T>
static void drive(T* t, const Answers& s) {
    t->io_ready = s.io_ready;
    t->resp_valid = s.resp_valid;
    t->resp_ok = s.resp_ok;
    t->resp_value = s.resp_value;
    t->ent_valid = s.ent_valid;
    t->ent_signal = s.ent_signal;
    t->ent_addr = s.ent_addr;
    t->ent_len = s.ent_len;
}

template <class T>
static void sample(const T* t, IoPort& s) {
    s.valid = t->io_valid;
    s.kind = t->io_kind;
    s.q = t->io_q;
    s.a = t->io_a;
    s.b = t->io_b;
    s.c = t->io_c;
    s.d = t->io_d;
    s.e = t->io_e;
}

// Each instance's own pins: `drive` applies the inputs, `sample` reads the outputs.
template <class T>
static void drive(T* t, const EqePins& s) {
    t->rst = s.rst;
    t->cmd_valid = s.cmd_valid;
    t->cmd_op = s.cmd_op;
    t->cmd_q = s.cmd_q;
    t->cmd_a = s.cmd_a;
    t->cmd_b = s.cmd_b;
    t->cmd_c = s.cmd_c;
    t->cmd_d = s.cmd_d;
    drive(t, s.ans);
}

template <class T>
static void sample(const T* t, EqePins& s) {
    s.cmd_ready = t->cmd_ready;
    sample(t, s.io);
}

static void drive(Venso_queue_regs* t, const EqrPins& s) {
    t->rst = s.rst;
    t->wr_valid = s.wr_valid;
    t->wr_queue = s.wr_queue;
    t->wr_reg = s.wr_reg;
    t->wr_data = s.wr_data;
    t->rx_valid = s.rx_valid;
    t->rx_pipe = s.rx_pipe;
    t->rx_len = s.rx_len;
    t->rd_queue = s.rd_queue;
    t->rd_reg = s.rd_reg;
    drive(t, s.ans);
}

static void sample(const Venso_queue_regs* t, EqrPins& s) {
    s.wr_ready = t->wr_ready;
    s.rx_ready = t->rx_ready;
    s.rd_data = t->rd_data;
    s.bad_writes = t->bad_writes;
    sample(t, s.io);
}

static void drive(Vnagare_pipeline* t, const NplPins& s) {
    t->rst = s.rst;
    t->cfg_we = s.cfg_we;
    t->cfg_addr = s.cfg_addr;
    t->cfg_wdata = s.cfg_wdata;
    t->in_valid = s.in_valid;
    t->in_src = s.in_src;
    t->in_addr = s.in_addr;
    t->in_len = s.in_len;
}

static void sample(const Vnagare_pipeline* t, NplPins& s) {
    s.out_valid = t->out_valid;
    s.out_verdict = t->out_verdict;
    s.out_reason = t->out_reason;
    s.out_stream = t->out_stream;
    s.out_dest_port = t->out_dest_port;
    s.out_dest_offset = t->out_dest_offset;
    s.out_egress = t->out_egress;
    s.out_glue = t->out_glue;
    s.out_credit = t->out_credit;
    s.out_credit_pipe = t->out_credit_pipe;
    s.out_credit_head = t->out_credit_head;
}

// One verilated instance behind the C ABI, whatever its top and pins.
struct Instance {
    virtual ~Instance() = default;
    virtual void cycle(void* pins) = 0;
};

template <class T, class P>
struct Model final : Instance {
    VerilatedContext ctx;
    T* top = new T{&ctx};

    Model() {
        top->clk = 0;
        top->eval();
    }

    ~Model() override {
        top->final();
        delete top;
    }

    // One cycle: inputs applied, clock low then high; outputs read after the rising edge.
    void cycle(void* pins) override {
        P& s = *static_cast<P*>(pins);
        drive(top, s);
        top->clk = 0;
        top->eval();
        top->clk = 1;
        top->eval();
        sample(top, s);
    }
};

template <class T, class P>
static void* make() {
    Instance* m = new Model<T, P>;
    return m;
}

extern "C" {

// `small`: the differential workload's instance (8 pipes of 64 flits, 4 pairs of 16
// entries) instead of the NIC's (64 pipes of 32768 flits, 16 pairs of 16384 entries).
void* eqe_new(int small) {
    return small ? make<Venso_queue_engine_small, EqePins>() : make<Venso_queue_engine, EqePins>();
}

void* eqr_new(void) { return make<Venso_queue_regs, EqrPins>(); }

void* npl_new(void) { return make<Vnagare_pipeline, NplPins>(); }

// Any instance: one clock cycle with the pins its constructor above names.
void model_cycle(void* p, void* pins) { static_cast<Instance*>(p)->cycle(pins); }

void model_free(void* p) { delete static_cast<Instance*>(p); }

}  // extern "C"

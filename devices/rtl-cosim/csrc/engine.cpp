// C ABI over the verilated enso_queue_engine: create, one clock cycle with the pins,
// destroy. The Rust side (src/lib.rs) owns the protocol; this file only moves pins.
#include <cstdint>
#include "Venso_queue_engine.h"
#include "Venso_queue_engine_small.h"
#include "Venso_queue_regs.h"
#include "Vnagare_pipeline.h"
#include "verilated.h"

extern "C" {

// Must match `Pins` in src/lib.rs (repr(C)).
struct EqePins {
    // Inputs.
    uint64_t cmd_a, ent_signal, ent_addr, ent_len;
    uint32_t cmd_q, cmd_b, cmd_c, cmd_d, resp_value;
    uint8_t rst, cmd_valid, cmd_op, io_ready, resp_valid, resp_ok, ent_valid;
    // Outputs.
    uint8_t cmd_ready, io_valid, io_kind;
    uint64_t io_a;
    uint32_t io_q, io_b, io_c, io_d, io_e;
};

}  // extern "C"

template <class T>
struct EqeModel {
    VerilatedContext ctx;
    T* top;
};

template <class T>
static void* model_new() {
    EqeModel<T>* m = new EqeModel<T>;
    m->top = new T{&m->ctx};
    m->top->clk = 0;
    m->top->eval();
    return m;
}

template <class T>
static void model_free(void* p) {
    EqeModel<T>* m = static_cast<EqeModel<T>*>(p);
    m->top->final();
    delete m->top;
    delete m;
}

// One cycle: inputs applied, clock low then high; outputs read after the rising edge.
template <class T>
static void model_cycle(void* p, EqePins* s) {
    T* t = static_cast<EqeModel<T>*>(p)->top;
    t->rst = s->rst;
    t->cmd_valid = s->cmd_valid;
    t->cmd_op = s->cmd_op;
    t->cmd_q = s->cmd_q;
    t->cmd_a = s->cmd_a;
    t->cmd_b = s->cmd_b;
    t->cmd_c = s->cmd_c;
    t->cmd_d = s->cmd_d;
    t->io_ready = s->io_ready;
    t->resp_valid = s->resp_valid;
    t->resp_ok = s->resp_ok;
    t->resp_value = s->resp_value;
    t->ent_valid = s->ent_valid;
    t->ent_signal = s->ent_signal;
    t->ent_addr = s->ent_addr;
    t->ent_len = s->ent_len;
    t->clk = 0;
    t->eval();
    t->clk = 1;
    t->eval();
    s->cmd_ready = t->cmd_ready;
    s->io_valid = t->io_valid;
    s->io_kind = t->io_kind;
    s->io_q = t->io_q;
    s->io_a = t->io_a;
    s->io_b = t->io_b;
    s->io_c = t->io_c;
    s->io_d = t->io_d;
    s->io_e = t->io_e;
}

extern "C" {

// `small`: the differential workload's instance (8 pipes of 64 flits, 4 pairs of 16
// entries) instead of the NIC's (64 pipes of 32768 flits, 16 pairs of 16384 entries).
void* eqe_new(int small) {
    return small ? model_new<Venso_queue_engine_small>() : model_new<Venso_queue_engine>();
}

void eqe_free(void* p, int small) {
    if (small) model_free<Venso_queue_engine_small>(p);
    else model_free<Venso_queue_engine>(p);
}

void eqe_cycle(void* p, int small, EqePins* s) {
    if (small) model_cycle<Venso_queue_engine_small>(p, s);
    else model_cycle<Venso_queue_engine>(p, s);
}


// The Nagare match-action pipeline. Must match `PipelinePins` in src/lib.rs.
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

void* npl_new(void) { return model_new<Vnagare_pipeline>(); }

void npl_free(void* p) { model_free<Vnagare_pipeline>(p); }

void npl_cycle(void* p, NplPins* s) {
    Vnagare_pipeline* t = static_cast<EqeModel<Vnagare_pipeline>*>(p)->top;
    t->rst = s->rst;
    t->cfg_we = s->cfg_we;
    t->cfg_addr = s->cfg_addr;
    t->cfg_wdata = s->cfg_wdata;
    t->in_valid = s->in_valid;
    t->in_src = s->in_src;
    t->in_addr = s->in_addr;
    t->in_len = s->in_len;
    t->clk = 0;
    t->eval();
    t->clk = 1;
    t->eval();
    s->out_valid = t->out_valid;
    s->out_verdict = t->out_verdict;
    s->out_reason = t->out_reason;
    s->out_stream = t->out_stream;
    s->out_dest_port = t->out_dest_port;
    s->out_dest_offset = t->out_dest_offset;
    s->out_egress = t->out_egress;
    s->out_glue = t->out_glue;
    s->out_credit = t->out_credit;
    s->out_credit_pipe = t->out_credit_pipe;
    s->out_credit_head = t->out_credit_head;
}


// The register front end with the engine behind it. Must match `RegsPins` in src/lib.rs.
struct EqrPins {
    // Inputs.
    uint64_t ent_signal, ent_addr, ent_len;
    uint32_t wr_data, rx_pipe, rx_len, resp_value;
    uint16_t wr_queue, rd_queue;
    uint8_t rst, wr_valid, wr_reg, rx_valid, rd_reg, io_ready, resp_valid, resp_ok, ent_valid;
    // Outputs.
    uint8_t wr_ready, rx_ready, io_valid, io_kind;
    uint32_t rd_data, bad_writes;
    uint64_t io_a;
    uint32_t io_q, io_b, io_c, io_d, io_e;
};

void* eqr_new(void) { return model_new<Venso_queue_regs>(); }

void eqr_free(void* p) { model_free<Venso_queue_regs>(p); }

void eqr_cycle(void* p, EqrPins* s) {
    Venso_queue_regs* t = static_cast<EqeModel<Venso_queue_regs>*>(p)->top;
    t->rst = s->rst;
    t->wr_valid = s->wr_valid;
    t->wr_queue = s->wr_queue;
    t->wr_reg = s->wr_reg;
    t->wr_data = s->wr_data;
    t->rx_valid = s->rx_valid;
    t->rx_pipe = s->rx_pipe;
    t->rx_len = s->rx_len;
    t->rd_queue = s->rd_queue;
    t->rd_reg = s->rd_reg;
    t->io_ready = s->io_ready;
    t->resp_valid = s->resp_valid;
    t->resp_ok = s->resp_ok;
    t->resp_value = s->resp_value;
    t->ent_valid = s->ent_valid;
    t->ent_signal = s->ent_signal;
    t->ent_addr = s->ent_addr;
    t->ent_len = s->ent_len;
    t->clk = 0;
    t->eval();
    t->clk = 1;
    t->eval();
    s->wr_ready = t->wr_ready;
    s->rx_ready = t->rx_ready;
    s->rd_data = t->rd_data;
    s->bad_writes = t->bad_writes;
    s->io_valid = t->io_valid;
    s->io_kind = t->io_kind;
    s->io_q = t->io_q;
    s->io_a = t->io_a;
    s->io_b = t->io_b;
    s->io_c = t->io_c;
    s->io_d = t->io_d;
    s->io_e = t->io_e;
}

}  // extern "C"

// Synthesis harness only (rtl/synth.sh): enso_queue_engine with its wide ports behind two
// shift registers, so the design fits an iCE40's pins for place-and-route and an fmax
// estimate. Every engine input comes from a flip-flop and every output goes into one, as
// it would next to a PCIe/DMA block; the harness adds about 700 flip-flops to the count.
module enso_queue_engine_pins #(
    parameter int NPIPES = 4,
    parameter int NNB = 2,
    parameter int PIPE_LOG2 = 10,
    parameter int ENTRIES_LOG2 = 8
) (
    input  logic clk,
    input  logic rst,
    input  logic sin,
    input  logic shift,
    output logic sout
);
    localparam int IN_W = 1 + 4 + 32 + 64 + 32 * 3 + 1 + 1 + 1 + 32 + 1 + 64 * 3;
    localparam int OUT_W = 1 + 1 + 4 + 32 + 64 + 32 * 4;
    logic [IN_W-1:0] in_sr;
    logic [OUT_W-1:0] out_sr;
    logic cmd_valid, cmd_ready, io_valid, io_ready, resp_valid, resp_ok, ent_valid;
    logic [3:0] cmd_op, io_kind;
    logic [31:0] cmd_q, cmd_b, cmd_c, cmd_d, io_q, io_b, io_c, io_d, io_e, resp_value;
    logic [63:0] cmd_a, io_a, ent_signal, ent_addr, ent_len;
    assign {cmd_valid, cmd_op, cmd_q, cmd_a, cmd_b, cmd_c, cmd_d, io_ready, resp_valid, resp_ok,
            resp_value, ent_valid, ent_signal, ent_addr, ent_len} = in_sr;
    enso_queue_engine #(.NPIPES(NPIPES), .NNB(NNB), .PIPE_LOG2(PIPE_LOG2), .ENTRIES_LOG2(ENTRIES_LOG2))
        engine (.*);
    always_ff @(posedge clk) begin
        if (shift) begin
            in_sr <= {in_sr[IN_W-2:0], sin};
            out_sr <= {out_sr[OUT_W-2:0], 1'b0};
        end else
            out_sr <= {cmd_ready, io_valid, io_kind, io_q, io_a, io_b, io_c, io_d, io_e};
    end
    assign sout = out_sr[OUT_W-1];
endmodule

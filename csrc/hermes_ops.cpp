// The one extension hermes._C: operator schemas of the `hermes` namespace (implementations are
// registered per dispatch key next to their kernels, in csrc/<op>/). Autograd and fake
// (meta) implementations are registered from Python, in hermes/ops/cpp_backend/ (one module per op).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(hermes, m) {
  // Supervised contrastive loss. Returns (loss (N,) per anchor, unweighted, 0 without a
  // positive; lse (N,): log-sum-exp of the denominator ("all") or of the negatives
  // ("pos_plus_neg"); q (N,): sum over positives of sigmoid(lse_i - s_ip) ("pos_plus_neg"),
  // else zeros; num_pos (N,) int64).
  m.def(
      "supcon_fwd(Tensor anchors, Tensor labels, Tensor contrasts, Tensor contrast_labels, "
      "float temperature, float base_temperature, int? self_offset, bool pos_plus_neg) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Gradients of sum_i grad_loss_i * loss_i with respect to anchors and contrasts.
  m.def(
      "supcon_bwd(Tensor grad_loss, Tensor anchors, Tensor labels, Tensor contrasts, "
      "Tensor contrast_labels, Tensor lse, Tensor q, Tensor num_pos, float temperature, "
      "float base_temperature, int? self_offset, bool pos_plus_neg) -> (Tensor, Tensor)");
  // Dual threshold, pass 1: (labels int64, confidence fp32, entropy fp32, ok bool,
  // histogram (C,) int64) from logits (B, C, P) and valid (B, P) (or an empty tensor).
  m.def(
      "dual_threshold_pass1(Tensor logits, Tensor valid) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Dual threshold, pass 2: (reliable bool, kept (3, C) int64 [confident, certain, reliable]
  // counts over ok entries, sums (2,) fp32 [confidence, entropy] over ok entries).
  m.def(
      "dual_threshold_pass2(Tensor labels, Tensor confidence, Tensor entropy, Tensor ok, "
      "Tensor thresholds, Tensor eta) -> (Tensor, Tensor, Tensor)");
  // Inter-task attention: (y, pooled (B, 2, H, W) [max, mean] of gate * x, attention (B, H, W)).
  m.def(
      "inter_task_attention_fwd(Tensor x, Tensor gate, Tensor weight, Tensor bias) "
      "-> (Tensor, Tensor, Tensor)");
  // Its backward: (grad_x, grad_gate, grad_weight, grad_bias).
  m.def(
      "inter_task_attention_bwd(Tensor grad_y, Tensor x, Tensor gate, Tensor weight, "
      "Tensor pooled, Tensor attention) -> (Tensor, Tensor, Tensor, Tensor)");
}

// An importable Python module with no Python-level functions: importing it runs the static
// registrations above (the ops are then reached as torch.ops.hermes.*).
static struct PyModuleDef hermes_c_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&hermes_c_module); }

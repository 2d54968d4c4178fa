// Loads a TorchScript model saved from Python (with droppath_ext.DropPath
// inside), runs a training-mode forward and backward, one SGD step, then an
// eval-mode forward, all in C++. The droppath ops come from libdroppath,
// linked through DropPath::droppath. Built twice: train_scripted also calls
// the C++ API directly; train_scripted_only (DROPPATH_EXAMPLE_SCRIPT_ONLY)
// refers to no droppath symbol at all, and still finds the ops registered.
//
//   train_scripted model.pt
#include <torch/script.h>
#include <torch/torch.h>

#include <droppath.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " <scripted_model.pt>\n";
    return 2;
  }
  torch::manual_seed(0);
  torch::jit::Module model = torch::jit::load(argv[1]);
  std::vector<torch::Tensor> params;
  for (const auto& p : model.parameters()) {
    params.push_back(p);
  }
  torch::optim::SGD optimizer(params, torch::optim::SGDOptions(0.01));

  const torch::Tensor x = torch::randn({16, 8});
  model.train();
  optimizer.zero_grad();
  torch::Tensor out = model.forward({x}).toTensor();
  torch::Tensor loss = out.pow(2).mean();
  loss.backward();
  for (const auto& p : params) {
    if (!p.grad().defined() || !torch::isfinite(p.grad()).all().item<bool>()) {
      std::cerr << "FAIL: a parameter has no finite gradient\n";
      return 1;
    }
  }
  optimizer.step();
  std::cout << "train loss " << loss.item<double>() << "\n";

  model.eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor a = model.forward({x}).toTensor();
  const torch::Tensor b = model.forward({x}).toTensor();
  if (!torch::equal(a, b)) {
    std::cerr << "FAIL: eval mode is not deterministic\n";
    return 1;
  }
  std::cout << "eval output sum " << a.sum().item<double>() << "\n";

#ifndef DROPPATH_EXAMPLE_SCRIPT_ONLY
  // The C++ API, directly (docs/cpp.md shows this part).
  // --8<-- [start:api]
  const torch::Tensor residual = torch::randn({16, 8}), branch = torch::randn({16, 8});
  torch::Tensor y = droppath::forward(x, /*drop_prob=*/0.1, /*training=*/true, /*scale_by_keep=*/true);
  torch::Tensor z = droppath::add(residual, branch, 0.1, true, true);  // residual + forward(branch), one pass
  // sequence-first [s, b, h]: samples along dim 1
  torch::Tensor s = droppath::forward(torch::randn({5, 4, 8}), 0.1, true, true, /*generator=*/std::nullopt,
                                      /*batch_dim=*/1);
  // packed [total_tokens, h]: sample i is rows cu_seqlens[i] to cu_seqlens[i + 1]
  const torch::Tensor cu_seqlens = torch::tensor({0, 5, 5, 14}, torch::kInt32);
  torch::Tensor p = droppath::forward(torch::randn({14, 8}), 0.1, true, true, std::nullopt, 0, cu_seqlens);
  // --8<-- [end:api]
  if (!y.sizes().equals(x.sizes()) || !z.sizes().equals(x.sizes()) || s.size(1) != 4 || p.size(0) != 14) {
    std::cerr << "FAIL: the C++ API returned the wrong shapes\n";
    return 1;
  }
  // Drop everything -> zeros.
  const torch::Tensor zeros = droppath::forward(x, 1.0, true, true);
  if (!torch::equal(zeros, torch::zeros_like(x))) {
    std::cerr << "FAIL: droppath::forward(p=1) is not zero\n";
    return 1;
  }
#endif
  std::cout << "OK\n";
  return 0;
}

"""A short run of every CUDA kernel over awkward sizes, layouts and dtypes,
for compute-sanitizer (memcheck, racecheck, initcheck): see scripts/gpu_check.sh."""

import torch

import droppath_ext as dp

assert torch.cuda.is_available(), "needs a GPU"
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for shape in ((1, 1), (3, 5), (8, 197, 768), (4, 7, 9, 11), (0, 4), (5, 0), (33,)):
        x = torch.randn(shape, device="cuda").to(dtype).requires_grad_()
        r = torch.randn(shape, device="cuda").to(dtype).requires_grad_()
        y = dp.drop_path(x, 0.3, True) + dp.drop_path_add(r, x, 0.6, True)
        y.float().sum().backward()
        if x.dim() == 4:
            cl = x.detach().contiguous(memory_format=torch.channels_last)
            dp.drop_path_add(cl, cl, 0.5, True)
        if x.numel() > 1:
            odd = x.detach().reshape(-1)[1:]  # misaligned start
            dp.drop_path(odd, 0.5, True)
torch.cuda.synchronize()
print("sanitizer workload done")

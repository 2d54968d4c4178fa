"""A short run of every CUDA kernel over awkward sizes, layouts, dtypes, batch
dims, packed offsets and skip mode, for compute-sanitizer (memcheck,
racecheck, initcheck): see scripts/gpu_check.sh."""

import torch

import droppath_ext as dp
from droppath_ext.residual import drop_path_residual

assert torch.cuda.is_available(), "needs a GPU"
torch.manual_seed(0)
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    for shape in ((1, 1), (3, 5), (8, 197, 768), (4, 7, 9, 11), (0, 4), (5, 0), (33,)):
        x = torch.randn(shape, device="cuda").to(dtype).requires_grad_()
        r = torch.randn(shape, device="cuda").to(dtype).requires_grad_()
        y = dp.drop_path(x, 0.3, True) + dp.drop_path_add(r, x, 0.6, True)
        y = y + dp.drop_path(x, 0.5, True, batch_dim=-1)
        y.float().sum().backward()
        if x.dim() == 4:
            cl = x.detach().contiguous(memory_format=torch.channels_last)
            dp.drop_path_add(cl, cl, 0.5, True)
            dp.drop_path(cl, 0.5, True, batch_dim=1)
        if x.numel() > 1:
            odd = x.detach().reshape(-1)[1:]  # misaligned start
            dp.drop_path(odd, 0.5, True)
        if x.dim() >= 2 and x.shape[0] > 0:
            tokens = x.shape[0]
            cu = torch.tensor([0, tokens // 2, tokens // 2, tokens], device="cuda", dtype=torch.int32)
            dp.drop_path_add(r.detach(), x.detach(), 0.5, True, cu_seqlens=cu)
        if x.dim() >= 2:
            branch = torch.nn.Linear(x.shape[-1], x.shape[-1]).to("cuda", dtype)
            for skip in (True, False):
                out = drop_path_residual(x, branch, 0.5, True, skip_dropped=skip)
                out.float().sum().backward()
            drop_path_residual(x.detach(), torch.tanh, 0.5, True, skip_dropped=True, batch_dim=-1)
for bad in ([0, 9, 3], [1, 4], [0, -5, 4], [0, 4, 100]):  # rejected on the host, never read out of bounds
    try:
        dp.drop_path(torch.randn(4, 3, device="cuda"), 0.5, True,
                     cu_seqlens=torch.tensor(bad, device="cuda"))
    except ValueError:
        pass
    else:
        raise AssertionError(f"bad offsets {bad} were accepted")
torch.cuda.synchronize()
print("sanitizer workload done")

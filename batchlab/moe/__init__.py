"""Mixture of experts (REFERENCE 5, 2.7), pure kernels: routers, dispatch, balance metrics,
cost, expert parallelism. They import nothing of batchlab but cost, numerics and errors.

Shapes (besides WORKSPACE.md's letters): B tokens in one routing group (a batch of
sequences flattened, B·S), k choices per token (top-k), M token copies (B·k for token
choice, E·C for expert choice).
"""

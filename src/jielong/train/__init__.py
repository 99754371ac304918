"""Training: the one loop (`loop`), its shared parts (losses, sampling of batches, common
helpers), and one module per stage — pretrain, sft, classify, distill, reward, dpo, kto, rlhf —
each its data, its loss and its command; no stage imports another."""

"""The end-to-end demo (`jielong demo`): a small fictional world (`world`), the tasks made
from it (`tasks`), and the stages that take a tiny model through pretraining (`run`),
finetuning (`finetune`), alignment (`align`) and a first chat with feedback (`chat`)."""

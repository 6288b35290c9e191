"""Training recipe of pplx-embed: diffusion pretraining, contrastive stages with QAT and MRL,
SLERP merging and domain fine-tuning (see ``docs/training.md``)."""

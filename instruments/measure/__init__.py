"""What measures: hooks on the model, saliency, per-step traces of an episode, the failure heatmap."""

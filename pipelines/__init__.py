"""Diffusers pipelines of st-ar-hf (shipped as `st_ar_hf.pipelines`)."""

from .pipeline_star import STARPipeline, STARPipelineOutput

__all__ = ["STARPipeline", "STARPipelineOutput"]

"""Compatibility services, so that clients written for other text-to-image gRPC servers work
unchanged against this one. Each maps its request onto the same queue as sdcore.v1.
ImageService is also served as img_service.ImageService (proto/img_service.proto)."""

from sdcore.service.core import memory_bytes, rpc_method
from sdcore.service.gen import (
    gpu_service_pb2,
    gpu_service_pb2_grpc,
    image_service_pb2,
    image_service_pb2_grpc,
    text2image_pb2,
    text2image_pb2_grpc,
)

import sdcore
from sdcore.request import GenerationRequest


class GpuServicer(gpu_service_pb2_grpc.GpuServiceServicer):
    """gpu.GpuService/Prompt: {prompt} -> {image: PNG, status: "completed"}."""

    def __init__(self, core):
        self.core = core

    @rpc_method("gpu.GpuService/Prompt")
    async def Prompt(self, request, context):
        params = self.core.params(GenerationRequest(prompt=request.prompt))
        _job, images = await self.core.generate(params, context)
        return gpu_service_pb2.PromptReply(image=images[0].png, status="completed")


class ImageServicer(image_service_pb2_grpc.ImageServiceServicer):
    """ImageService/GenerateImage: {positive_prompt, negative_prompt} -> {image, mime_type,
    filename_hint}."""

    def __init__(self, core):
        self.core = core

    @rpc_method("ImageService/GenerateImage")
    async def GenerateImage(self, request, context):
        params = self.core.params(
            GenerationRequest(
                prompt=request.positive_prompt, negative_prompt=request.negative_prompt
            ),
            {"prompt": "positive_prompt"},
        )
        job, images = await self.core.generate(params, context)
        return image_service_pb2.ImageResponse(
            image=images[0].png,
            mime_type="image/png",
            filename_hint=f"sdcore-{images[0].seed}.png",
        )


class Text2ImageServicer(text2image_pb2_grpc.Text2ImageServiceServicer):
    """text2image.Text2ImageService: GenerateImage with its parameters, and GetStatus."""

    def __init__(self, core):
        self.core = core

    @rpc_method("text2image.Text2ImageService/GenerateImage")
    async def GenerateImage(self, request, context):
        # 0 (and a seed of -1) mean "the default", as this service's clients expect
        params = self.core.params(
            GenerationRequest(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                width=request.width or None,
                height=request.height or None,
                num_inference_steps=request.num_inference_steps or None,
                guidance_scale=request.guidance_scale or None,
                seed=request.seed,
            )
        )
        job, images = await self.core.generate(params, context)
        return text2image_pb2.GenerateImageResponse(
            image=images[0].png,
            prompt=params.prompt,
            height=params.height,
            width=params.width,
            guidance_scale=params.guidance_scale,
            num_inference_steps=params.steps,
            negative_prompt=params.negative_prompt,
            seed=images[0].seed,
            mime_type="image/png",
            generation_time_seconds=job.generate_seconds,
        )

    @rpc_method("text2image.Text2ImageService/GetStatus")
    async def GetStatus(self, request, context):
        core = self.core
        model = core.default_model or "(loading)"
        rss, _peak = memory_bytes()
        device = core.config.device
        if core.default_model is not None:
            device = core.slots[core.default_model].pipeline.device
        return text2image_pb2.StatusResponse(
            status={"loading": "loading", "ready": "ready"}.get(core.state, "shutting_down"),
            model_version=f"{model} (sdcore {sdcore.__version__})",
            device=device,
            memory_rss_bytes=rss,
            queue_depth=core.batcher.queue_depth(),
            jobs_in_flight=core.batcher.in_flight(),
            uptime_seconds=core.uptime(),
        )

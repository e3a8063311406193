"""sdcore.v1.Sdcore: the service's own API."""

import asyncio

from sdcore.service.core import caller, memory_bytes, rpc_method
from sdcore.service.errors import InvalidArgument
from sdcore.service.gen import sdcore_service_pb2 as pb
from sdcore.service.gen import sdcore_service_pb2_grpc as pb_grpc

import sdcore
from sdcore.request import GenerationRequest

# GenerateRequest's names for the request fields it spells otherwise
WIRE_NAMES = {"num_inference_steps": "steps"}


def generation_request(request):
    """A GenerateRequest as a GenerationRequest: 0 and "" (and unset optionals) are None,
    the model's or the server's default."""
    return GenerationRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=request.width or None,
        height=request.height or None,
        num_inference_steps=request.steps or None,
        guidance_scale=request.guidance_scale if request.HasField("guidance_scale") else None,
        seed=request.seed if request.HasField("seed") else None,
        sampler=request.sampler or None,
        num_images=request.num_images or 1,
        model=request.model or None,
    )


def params_from_request(core, request):
    return core.params(generation_request(request), WIRE_NAMES)


def response_from_job(job, images):
    total = (job.t_end or job.t_start) - job.t_arrive
    return pb.GenerateResponse(
        images=[
            pb.Image(
                png=im.png, seed=im.seed, width=im.width, height=im.height, parameters=im.parameters
            )
            for im in images
        ],
        seeds=[im.seed for im in images],
        timings=pb.Timings(
            queued_seconds=(job.t_start or job.t_arrive) - job.t_arrive,
            generate_seconds=job.generate_seconds,
            total_seconds=total,
            batch_requests=job.batch_requests,
        ),
        job_id=job.id,
        model=job.params.model,
    )


def _check_job_id(job_id):
    if len(job_id) > 128 or not job_id.isprintable():
        raise InvalidArgument("job_id: at most 128 printable characters")


class SdcoreServicer(pb_grpc.SdcoreServicer):
    def __init__(self, core):
        self.core = core

    @rpc_method("Generate")
    async def Generate(self, request, context):
        _check_job_id(request.job_id)
        params = params_from_request(self.core, request)
        job = self.core.submit(params, context, job_id=request.job_id)
        await context.send_initial_metadata((("x-job-id", job.id),))
        images = await self.core.result(job)
        return response_from_job(job, images)

    @rpc_method("GenerateStream", streaming=True)
    async def GenerateStream(self, request, context):
        _check_job_id(request.job_id)
        params = params_from_request(self.core, request)
        job = self.core.submit(
            params, context, job_id=request.job_id, want_events=True, preview=request.preview
        )
        try:
            while True:
                event = await job.next_event()
                if event is None:
                    break
                if event[0] == "queued":
                    yield pb.GenerateEvent(queued=pb.Queued(job_id=job.id, position=event[1]))
                else:
                    _, step, total, png = event
                    yield pb.GenerateEvent(
                        progress=pb.Progress(job_id=job.id, step=step, total=total, preview_png=png)
                    )
        except (asyncio.CancelledError, GeneratorExit):
            self.core.abandon(job)
            raise
        images = job.future.result()  # raises the job's error, if it failed
        yield pb.GenerateEvent(result=response_from_job(job, images))

    @rpc_method("Cancel")
    async def Cancel(self, request, context):
        if not request.job_id:
            raise InvalidArgument("job_id: empty")
        _check_job_id(request.job_id)
        previous = self.core.batcher.cancel(
            request.job_id, "cancelled by a Cancel request", owner=caller(context)
        )
        return pb.CancelResponse(job_id=request.job_id, previous_state=previous)

    @rpc_method("GetStatus")
    async def GetStatus(self, request, context):
        core = self.core
        rss, peak = memory_bytes()
        reply = pb.StatusResponse(
            version=sdcore.__version__,
            queue_depth=core.batcher.queue_depth(),
            jobs_in_flight=core.batcher.in_flight(),
            uptime_seconds=core.uptime(),
            rss_bytes=rss,
            peak_rss_bytes=peak,
            model_loaded=core.state != "loading" and bool(core.slots),
            queue_capacity=core.config.queue_size,
            max_batch_size=core.config.max_batch_size,
            images_generated=core.batcher.images_generated,
            device=core.config.device,
        )
        if core.default_model is not None:
            pipe = core.slots[core.default_model].pipeline
            reply.model = pipe.name
            reply.device = pipe.device
            reply.random_weights = bool(getattr(pipe, "random_weights", False))
            if pipe.device == "cuda":
                free, total = sdcore._C.cuda_memory_info()
                reply.gpu_memory_used_bytes = total - free
                reply.gpu_memory_total_bytes = total
        return reply

    @rpc_method("ListModels")
    async def ListModels(self, request, context):
        models = []
        for name, slot in self.core.slots.items():
            pipe = slot.pipeline
            w, h = pipe.default_size
            models.append(
                pb.ModelInfo(
                    name=name,
                    device=pipe.device,
                    is_default=name == self.core.default_model,
                    random_weights=bool(getattr(pipe, "random_weights", False)),
                    default_width=w,
                    default_height=h,
                    samplers=list(pipe.samplers),
                    default_guidance_scale=pipe.rules.guidance_scale,
                )
            )
        return pb.ListModelsResponse(models=models)

    @rpc_method("GetEmbedding")
    async def GetEmbedding(self, request, context):
        core = self.core
        # the prompt and model are checked as Generate checks them
        params = core.params(GenerationRequest(prompt=request.prompt, model=request.model or None))
        slot, emb = await core.embedding(params.prompt, params.model, context)
        return pb.EmbeddingResponse(
            shape=list(emb.shape), values=emb.ravel().tolist(), model=slot.name
        )

"""The Gradio page: controls on the left; messages, progress, preview, gallery, parameters and
PNG downloads on the right; the server's status on top. Every element a test looks for has an
`sd-...` elem_id."""

import dataclasses

from sdcore.frontend.demo import KEEP, Update, settings_from_controls

CSS = """
#sd-message { color: #b91c1c; font-weight: 600; }
#sd-status { font-size: 0.9em; }
"""

STATUS_SECONDS = 2.0  # how often the status panel asks the server


def build_app(demo, title="sdcore"):
    import gradio as gr

    defaults = demo.model_defaults()
    # Gradio's copies of the PNGs it served are deleted after a day, checked every hour
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        gr.Markdown(f"# {title}\nText to image with sdcore, over its {demo.backend.api} API.")
        status = gr.Markdown(demo.status_text(), elem_id="sd-status")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="sd-prompt")
                negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="sd-negative")
                with gr.Row():
                    width = gr.Number(
                        defaults.width, label="Width", precision=0, step=8, elem_id="sd-width"
                    )
                    height = gr.Number(
                        defaults.height, label="Height", precision=0, step=8, elem_id="sd-height"
                    )
                with gr.Row():
                    steps = gr.Number(20, label="Steps", precision=0, elem_id="sd-steps")
                    cfg = gr.Number(
                        defaults.guidance, label="CFG scale", step=0.5, elem_id="sd-cfg"
                    )
                with gr.Row():
                    seed = gr.Number(-1, label="Seed", precision=0, elem_id="sd-seed")
                    random_seed = gr.Checkbox(True, label="Random seed", elem_id="sd-random-seed")
                with gr.Row():
                    sampler = gr.Dropdown(
                        list(defaults.samplers),
                        value=defaults.sampler,
                        label="Sampler",
                        elem_id="sd-sampler",
                    )
                    count = gr.Slider(
                        1, 8, value=1, step=1, label="Number of images", elem_id="sd-count"
                    )
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="sd-generate")
                    cancel = gr.Button("Cancel", elem_id="sd-cancel")
            with gr.Column(scale=1):
                message = gr.Markdown("", elem_id="sd-message")
                progress = gr.Markdown("", elem_id="sd-progress")
                preview = gr.Image(
                    label="Preview",
                    type="pil",
                    format="png",
                    interactive=False,
                    height=160,
                    elem_id="sd-preview",
                )
                gallery = gr.Gallery(
                    label="Results",
                    columns=4,
                    height="auto",
                    object_fit="contain",
                    buttons=["download", "fullscreen"],
                    elem_id="sd-gallery",
                )
                parameters = gr.Textbox(
                    label="Parameters", lines=4, interactive=False, elem_id="sd-parameters"
                )
                files = gr.File(
                    label="PNG downloads (with their parameters)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="sd-downloads",
                )

        shown = {
            "progress": progress,
            "preview": preview,
            "gallery": gallery,
            "files": files,
            "parameters": parameters,
            "message": message,
            "seed": seed,
        }

        def on_generate(
            prompt_text,
            negative_text,
            width_value,
            height_value,
            steps_value,
            cfg_value,
            seed_value,
            random_value,
            sampler_value,
            count_value,
            request: gr.Request,
        ):
            try:
                settings = settings_from_controls(
                    prompt_text,
                    negative_text,
                    width_value,
                    height_value,
                    steps_value,
                    cfg_value,
                    seed_value,
                    random_value,
                    sampler_value,
                    count_value,
                )
            except ValueError as e:
                yield _changes(Update(message=f"Invalid input: {e}"), shown)
                return
            for update in demo.generate(settings, session=request.session_hash):
                yield _changes(update, shown)

        def on_cancel(request: gr.Request):
            return demo.cancel(session=request.session_hash)

        def on_load():
            # the server may have come up, or changed model, since the page was built; what
            # has not changed is left alone, so that a value typed meanwhile is not reset
            d = demo.model_defaults()
            if d == defaults:
                return demo.status_text(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return (
                demo.status_text(),
                d.width,
                d.height,
                gr.Dropdown(choices=list(d.samplers), value=d.sampler),
                d.guidance,
            )

        controls = [prompt, negative, width, height, steps, cfg, seed, random_seed, sampler, count]
        for trigger in (generate.click, prompt.submit):
            trigger(
                on_generate,
                inputs=controls,
                outputs=list(shown.values()),
                concurrency_limit=None,  # the server's queue decides, and says when it is full
            ).then(demo.status_text, outputs=status, show_progress="hidden")
        cancel.click(on_cancel, outputs=progress, concurrency_limit=None)
        app.load(on_load, outputs=[status, width, height, sampler, cfg])
        timer = gr.Timer(STATUS_SECONDS)
        timer.tick(demo.status_text, outputs=status, show_progress="hidden")
    return app


def _changes(update, shown):
    """An Update as Gradio's {component: value}, leaving out what stays as it is."""
    return {
        shown[field.name]: getattr(update, field.name)
        for field in dataclasses.fields(update)
        if getattr(update, field.name) is not KEEP
    }

"""`iwarp demo`: a web page (Gradio) where a person animates photos of someone with a driving
video or their webcam, through the served model (TorchServe over HTTP, token auth) or the model
in this process (`--local`).

    config.py    DemoConfig: the command's settings
    media.py     what a person gives the page -> checked frames; source maps -> pictures; mp4s
    backends.py  HttpAnimator (serving.client) and LocalAnimator (iwarp.training.animate), one interface
    examples.py  example inputs cut from face videos that ship in installed packages
    ui.py        the Gradio page: a driving video, and a live webcam session on the cached sources
    cli.py       `iwarp demo`: picks the backend beside `make run`'s services, serves the page
"""

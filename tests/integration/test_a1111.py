"""The ``webuiapi`` library against real web and worker processes (docs/automatic1111.md)."""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
import webuiapi
from PIL import Image

from bench.processes import Stack, wait_for
from tests.factories import box_mask, gradient

pytestmark = pytest.mark.slow


def api_for(stack: Stack, **options: object) -> webuiapi.WebUIApi:
    """A client as users make one: HTTP Basic whose password is the key (webuiapi's set_auth)."""
    credentials = {"username": "easel", "password": stack.api_key} if stack.api_key else {}
    return webuiapi.WebUIApi(baseurl=f"{stack.base_url}/sdapi/v1", steps=2, **credentials, **options)


def test_txt2img_is_one_job_of_batch_size_times_n_iter_images(services_stack: Stack) -> None:
    # A1111's names for what Easel calls num_images (batch_size x n_iter), guidance_scale, scheduler
    renamed = {"batch_size": 1, "n_iter": 2, "cfg_scale": 5, "sampler_name": "DPM++ 2M"}
    result = api_for(services_stack).txt2img(
        prompt="a lighthouse", negative_prompt="fog", width=64, height=96, seed=1234, **renamed
    )
    assert [image.size for image in result.images] == [(64, 96), (64, 96)]
    assert result.info["all_seeds"] == [1234, 1235] and result.info["sampler_name"] == "DPM++ 2M"
    assert result.parameters["prompt"] == "a lighthouse"
    job = services_stack.job(result.info["easel_job_id"])  # owned by the key of the Basic password
    assert job["status"] == "succeeded" and job["type"] == "txt2img"
    assert job["params"]["scheduler"] == "dpmpp_2m" and job["params"]["guidance_scale"] == 5
    assert job["params"]["negative_prompt"] == "fog"
    stored = [services_stack.download(output["url"]).content for output in job["outputs"]]
    for image, data in zip(result.images, stored, strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("invert", [0, 1])
def test_img2img_with_a_mask_is_an_inpaint_job(services_stack: Stack, invert: int) -> None:
    picture, mask = gradient(64, 64), box_mask(64, 64, (16, 16, 48, 48))
    masking = {"mask_image": mask, "inpainting_mask_invert": invert, "mask_blur": 0}
    result = api_for(services_stack).img2img(
        images=[picture], prompt="a red boat", width=64, height=64, denoising_strength=0.9, seed=3, **masking
    )
    job = services_stack.job(result.info["easel_job_id"])
    assert job["status"] == "succeeded" and job["type"] == "inpaint"
    assert job["params"]["strength"] == 0.9 and job["params"]["mask_blur"] == 0
    stored = np.asarray(Image.open(io.BytesIO(services_stack.download(job["inputs"]["mask"]).content)))
    assert (stored[32, 32], stored[2, 2]) == ((0, 255) if invert else (255, 0))
    out = np.asarray(result.image.convert("RGB"), dtype=np.int16)
    original = np.asarray(picture, dtype=np.int16)
    kept = (slice(20, 44), slice(20, 44)) if invert else (slice(0, 8), slice(None))
    assert np.abs(out[kept] - original[kept]).max() <= 2  # black: kept


def test_progress_then_interrupt(services_stack: Stack) -> None:
    api = api_for(services_stack)
    answers: list[webuiapi.WebUIApiResult] = []
    long = threading.Thread(
        target=lambda: answers.append(
            api_for(services_stack).txt2img(
                prompt="a long one", width=512, height=512, steps=150, sampler_name="Euler"
            )
        )
    )
    long.start()
    try:
        progress = wait_for(
            lambda: (p := api.get_progress())["state"]["sampling_step"] > 0 and p, 60, "the job to run"
        )
        assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
        assert progress["state"]["sampling_steps"] == 150 and progress["state"]["job_count"] >= 1
        job_id = progress["state"]["job"].removeprefix("easel-")
        preview = wait_for(lambda: api.get_progress()["current_image"], 30, "the live preview")
        Image.open(io.BytesIO(base64.b64decode(preview))).load()  # a picture (JPEG)
        assert services_stack.job(job_id)["preview"]["step"] > 0  # what GET .../preview serves
        assert api.interrupt() == {}
    finally:
        long.join(120)
    (answer,) = answers
    assert answer.images == [] and answer.info["easel_status"] == "canceled"
    job = services_stack.wait(job_id)
    assert job["status"] == "canceled" and job["progress"]["step"] < 150
    assert api.get_progress()["state"]["job_count"] == 0


def test_lists_options_and_errors(services_stack: Stack) -> None:
    api = api_for(services_stack)
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "LCM", "PNDM", "UniPC"} <= set(
        api.util_get_sampler_names()
    )
    assert "tiny-sd" in api.util_get_model_names()
    api.util_set_model("tiny-sd")
    assert api.util_get_current_model() == "tiny-sd"
    with pytest.raises(RuntimeError) as caught:
        api.txt2img(prompt="p", width=64, height=64, sampler_name="Heun")
    status, text = caught.value.args
    assert status == 422
    assert json.loads(text)["detail"][0]["loc"] == ["body", "sampler_name"]
    with pytest.raises(RuntimeError) as caught:
        api.txt2img(prompt="p", width=64, height=64, enable_hr=True, hr_upscaler="no-such-upscaler")
    assert caught.value.args[0] == 422
    assert json.loads(caught.value.args[1])["detail"][0]["loc"] == ["body", "hr_upscaler"]


def test_txt2img_hires_fix_through_webuiapi(embedded_stack: Stack) -> None:
    api = api_for(embedded_stack)
    result = api.txt2img(
        prompt="a pond",
        width=64,
        height=64,
        steps=2,
        seed=3,
        enable_hr=True,
        hr_scale=2,
        hr_second_pass_steps=2,
    )
    assert result.image.size == (128, 128)
    job = embedded_stack.wait(result.info["easel_job_id"])
    assert job["params"]["hires"]["upscaler"] == "latent" and job["progress"]["total"] == 2 + 1


def test_img2img_sd_upscale_script_and_extras_through_webuiapi(embedded_stack: Stack) -> None:
    """A1111's "SD upscale" script (script_args [info, overlap, upscaler_index, scale_factor])
    and extra-single-image, each an Easel job run by the stack's worker."""
    api = api_for(embedded_stack)
    result = api.img2img(
        images=[gradient(48, 40)],
        prompt="a pond",
        width=64,
        height=64,
        steps=2,
        seed=3,
        denoising_strength=0.5,
        script_name="SD upscale",
        script_args=["", 16, 0, 2],
    )
    assert result.image.size == (96, 80)
    job = embedded_stack.wait(result.info["easel_job_id"])
    assert job["params"]["sd_upscale"] == {
        "upscaler": "lanczos",
        "scale": 2,
        "overlap": 16,
        "width": 96,
        "height": 80,
    }
    assert job["progress"]["total"] == 4 * 1  # 2 x 2 tiles of one step
    upscaled = api.extra_single_image(gradient(32, 24), upscaler_1="Lanczos", upscaling_resize=2)
    assert upscaled.image.size == (64, 48)


def test_no_credentials_needed_with_authentication_off(embedded_stack: Stack) -> None:
    result = api_for(embedded_stack).txt2img(prompt="a pond", width=64, height=64, sampler_name="Euler a")
    assert result.image.size == (64, 64) and len(result.info["all_seeds"]) == 1


def test_the_rest_of_a1111s_lists_and_options_round_trip(embedded_stack: Stack) -> None:
    api = api_for(embedded_stack)
    assert api.get_cmd_flags()["api"] is True
    assert api.get_hypernetworks() == api.get_face_restorers() == api.get_prompt_styles() == []
    assert api.get_realesrgan_models() == [] and api.get_embeddings()["loaded"] == {}
    options = api.get_options()
    assert options["send_seed"] is True and options["CLIP_stop_at_last_layers"] == 1
    try:
        assert api.set_options({**options, "sd_model_checkpoint": "tiny-sd", "send_seed": False}) is None
        assert api.get_options() == {**options, "sd_model_checkpoint": "tiny-sd"}  # only the model is kept
    finally:
        api.set_options(options)  # the session's stack: the next tests get the checkpoint they had
    assert "PLMS" in api.util_get_sampler_names()
    result = api.txt2img(prompt="a pond", width=64, height=64, seed=7, sampler_name="PLMS", tiling=True)
    assert result.image.size == (64, 64) and result.info["sampler_name"] == "PLMS"
    job = embedded_stack.job(result.info["easel_job_id"])
    assert job["status"] == "succeeded" and job["params"]["scheduler"] == "pndm"
    assert job["params"]["tiling"] is True  # seamless textures

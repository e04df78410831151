"""A minimal RunPod worker for testing the RunPod-compatible server: the unmodified
`runpod.serverless.start` loop with a handler that echoes, fails or sleeps on request."""
import asyncio

import runpod


async def handler(job):
    job_input = job["input"]
    if job_input.get("fail"):
        raise RuntimeError(job_input["fail"])
    if job_input.get("sleep"):
        await asyncio.sleep(job_input["sleep"])
    return {"echo": job_input}


if __name__ == "__main__":
    runpod.serverless.start({"handler": handler})

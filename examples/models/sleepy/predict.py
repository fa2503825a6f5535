"""A test model packaged with Cog: waits, echoes, or fails on demand.

Useful for exercising the scaler: `seconds` holds an instance busy, `fail`
makes the prediction fail with a message, and `crash` kills the whole
instance (the Cog server and its worker) mid-prediction, as an out-of-memory
kill would.
"""

import os
import signal
import time

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def setup(self) -> None:
        delay = float(os.environ.get("SLEEPY_SETUP_SECONDS", "0"))
        if os.environ.get("SLEEPY_FAIL_SETUP"):
            raise RuntimeError("setup failed on purpose")
        time.sleep(delay)

    def predict(
        self,
        seconds: float = Input(description="How long to wait", default=0.0, ge=0),
        message: str = Input(description="Echoed back", default="done"),
        fail: bool = Input(description="Fail with the message", default=False),
        crash: bool = Input(description="Kill the instance mid-prediction", default=False),
    ) -> str:
        time.sleep(seconds)
        if crash:
            os.killpg(os.getpgrp(), signal.SIGKILL)
        if fail:
            raise ValueError(message)
        return message

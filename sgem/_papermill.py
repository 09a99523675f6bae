"""The papermill engine the pipeline's stages run their notebooks with (``papermill --engine
sgem``, registered as an entry point of the ``papermill.engine`` group).

It is papermill's own nbclient engine, with one change: the kernel's connection is encrypted
where the installed Jupyter stack can do it (pyzmq built with CurveZMQ, and a jupyter_client
that provisions the keys: its ``KernelManager.transport_encryption``). papermill starts its
kernel over local TCP in plain text, and ipykernel 7.4 then warns, once per stage, that the
communication "is susceptible to eavesdropping"; with ``transport_encryption = "auto"`` the
manager provisions CurveZMQ keys for kernels whose kernelspec declares support (ipykernel's
does) and the warning has no cause. Where either piece is missing it behaves exactly as
papermill's default engine. A ``config`` passed by the caller is left as it is.
"""

from __future__ import annotations

from typing import Any

from papermill.engines import NBClientEngine


def _can_encrypt() -> bool:
    try:
        import zmq
        from jupyter_client.manager import KernelManager
    except ImportError:  # pragma: no cover - both come with papermill
        return False
    return bool(zmq.has("curve")) and "transport_encryption" in KernelManager.class_traits()


class EncryptedKernelEngine(NBClientEngine):
    """papermill's nbclient engine with the kernel connection encrypted where possible."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        if "config" not in kwargs and _can_encrypt():
            from traitlets.config import Config

            kwargs["config"] = Config({"KernelManager": {"transport_encryption": "auto"}})
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

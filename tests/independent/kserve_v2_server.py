"""An independent implementation of the KServe v2 / Open Inference Protocol that Triton also speaks:
KServe's own Python model server (PyPI ``kserve==0.21.0``: ``kserve/protocol/rest/v2_endpoints.py`` and
``kserve/protocol/grpc/servicer.py``), serving one trivial model. Not a test double: nothing here is
written to match dsv3ctl; it is run in its own virtual environment (kserve pins its own grpcio/protobuf).

    <kserve venv>/bin/python tests/independent/kserve_v2_server.py --http_port 18080 --grpc_port 18081
"""

from __future__ import annotations

import kserve
from kserve import InferRequest, InferResponse, Model, ModelServer


class Echo(Model):
    """Model ``tensorrt_llm``: ready after load; returns its input ``text_input`` as ``text_output``."""

    def __init__(self) -> None:
        super().__init__("tensorrt_llm")
        self.load()

    def load(self) -> bool:
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        from kserve import InferOutput

        data = payload.inputs[0].data
        out = InferOutput(name="text_output", shape=[len(data)], datatype="BYTES", data=data)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id)


if __name__ == "__main__":
    ModelServer().start([Echo()])
    _ = kserve

"""The LitServe peer of bench/service.py: a bundle's network served as a careful LitServe user would.

    python bench/_litserve_peer.py MODEL_FOLDER --port P [--batched]

The same weights (loaded with mcd.load_bundle), the bundle's standardisation read from its manifest, and MC
dropout as one batched computation: the rows repeated T times along the batch, dropout on (an MLP without
batch norm, so train mode switches on exactly its dropout), one forward pass, mean and std over the T
samples. ``--batched`` lets LitServe merge up to 64 requests (1 ms batch timeout), as its docs suggest.
Requests are the v1 body, ``{"inputs": [[...]], "samples": T}``; answers ``{"mean": [...], "std": [...]}``.
"""

import argparse
import json
from pathlib import Path

import litserve as ls
import torch

import mcdropout as mcd


class MCDropoutAPI(ls.LitAPI):
    def __init__(self, folder: Path, **options) -> None:
        super().__init__(**options)
        self.folder = folder

    def setup(self, device: str) -> None:
        self.net = mcd.load_bundle(self.folder, device="cpu").model.train()  # dropout on: MC dropout
        scales = json.loads((self.folder / "manifest.json").read_text())["preprocessing"]
        self.x_mean, self.x_std = (torch.tensor(scales["input"][key]) for key in ("mean", "std"))
        self.y_mean, self.y_std = (torch.tensor(scales["target"][key]) for key in ("mean", "std"))

    def decode_request(self, request: dict) -> tuple[torch.Tensor, int]:
        return torch.tensor(request["inputs"], dtype=torch.float32), int(request.get("samples", 100))

    def batch(self, inputs: list) -> tuple[torch.Tensor, int, list[int]]:
        return torch.cat([rows for rows, _ in inputs]), max(t for _, t in inputs), [len(rows) for rows, _ in inputs]

    def predict(self, x) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        rows, samples, sizes = x if len(x) == 3 else (*x, [len(x[0])])
        with torch.inference_mode():
            z = (rows - self.x_mean) / self.x_std
            out = self.net(z.repeat(samples, 1)).reshape(samples, len(rows), -1) * self.y_std + self.y_mean
        return out.mean(0), out.std(0), sizes

    def unbatch(self, output) -> list:
        mean, std, sizes = output
        return list(zip(mean.split(sizes), std.split(sizes)))

    def encode_response(self, output) -> dict:
        mean, std = output[:2]
        return {"mean": mean.squeeze(-1).tolist(), "std": std.squeeze(-1).tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batched", action="store_true")
    args = parser.parse_args()
    options = {"max_batch_size": 64, "batch_timeout": 0.001} if args.batched else {}
    server = ls.LitServer(MCDropoutAPI(args.folder, **options), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)

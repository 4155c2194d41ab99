"""``vfmseg federated``: federated LoRA across sites on Flower (simulation, server, site).

- ``simulate``: the whole federation on this machine (Flower's simulation runtime), then the same
  LoRA trained on each site alone and on all sites pooled, all measured on a test volume;
- ``server``: a SuperLink that runs the federated ServerApp (rounds, averaging, global adapter);
- ``site``: a SuperNode for one site's data, connecting out to the server.

Needs the optional extra ``napari-vfmseg[federated]`` (Flower; ``simulate`` also Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("federated training")
    group.add_argument("--strategy", choices=("ffa", "fedavg"), default="ffa",
                       help="ffa: A frozen from a shared seed, only B trained and averaged (exact; default); "
                            "fedavg: A and B trained and averaged separately")
    group.add_argument("--rounds", type=int, default=5, help="server rounds (default 5)")
    group.add_argument("--local-steps", type=int, default=20, help="optimiser steps per site and round (default 20)")
    group.add_argument("--sites-per-round", type=int, default=0, help="sites sampled per round (default 0: all)")
    group.add_argument("--images-per-step", type=int, default=4, help="planes per local step (default 4)")
    group.add_argument("--prompts-per-image", type=int, default=4, help="objects per plane and step (default 4)")
    group.add_argument("--correction-clicks", type=int, default=1,
                       help="corrective clicks after the first prompt in training (default 1)")
    group.add_argument("--lr", type=float, default=3e-3, help="learning rate of the LoRA tensors (default 3e-3)")
    group.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    group.add_argument("--alpha", type=float, default=8.0, help="LoRA alpha (default 8)")
    group.add_argument("--encoder-lora", action="store_true",
                       help="also put LoRA on the image encoder (slower: every step re-embeds its planes)")
    group.add_argument("--seed", type=int, default=0, help="seed of the shared A matrices and of sampling")
    group.add_argument("--round-timeout", type=float, default=1800.0,
                       help="seconds the server waits for the sites' replies in a round (default 1800)")


def _config(args: argparse.Namespace, min_sites: int):
    from napari_vfmseg.federated.config import FederatedConfig
    from napari_vfmseg.models.lora import DECODER_TARGETS

    encoder = ()
    if args.encoder_lora:
        from napari_vfmseg.federated.base_model import load_base
        from napari_vfmseg.models.lora import default_encoder_targets

        encoder = default_encoder_targets(load_base(args.model).sam.image_encoder)
    return FederatedConfig(strategy=args.strategy, rounds=args.rounds, local_steps=args.local_steps,
                           sites_per_round=args.sites_per_round, min_sites=min_sites, lr=args.lr, rank=args.rank,
                           images_per_step=args.images_per_step, prompts_per_image=args.prompts_per_image,
                           correction_clicks=args.correction_clicks,
                           alpha=args.alpha, decoder_targets=DECODER_TARGETS, encoder_targets=encoder,
                           seed=args.seed, round_timeout_s=args.round_timeout)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "federated",
        help="fine-tune one LoRA adapter across sites without sharing images (Flower)",
        description=("Federated LoRA on Flower: each site trains the adapter on its own scans and sends "
                     "only adapter tensors; the server averages them (FFA-LoRA by default). Needs "
                     "napari-vfmseg[federated]. See docs/federated.md."),
    )
    sub = parser.add_subparsers(dest="federated_command", metavar="ACTION")

    sim = sub.add_parser("simulate", help="run a whole federation on this machine, with baselines",
                         description="Flower's simulation of the server and one site per --site, then the "
                                     "same LoRA trained on each site alone and on all sites pooled; Dice "
                                     "(tight boxes) on the --test volume.")
    sim.add_argument("--site", action="append", required=True, metavar="IMAGE:LABELS",
                     help="one site's scan and label map (repeat for each site; at least two)")
    sim.add_argument("--test", required=True, metavar="IMAGE:LABELS", help="an unseen scan and labels to measure on")
    sim.add_argument("--out", required=True, metavar="ADAPTER", help="global adapter (.safetensors), rewritten every round")
    sim.add_argument("--model", default="builtin", help="base model (registry name or checkpoint; default builtin)")
    sim.add_argument("--no-baselines", action="store_true", help="skip the local and pooled baselines")
    sim.add_argument("--cpus", type=int, default=max(1, min(os.cpu_count() or 1, 4)),
                     help="CPUs the simulation may use (one site per CPU at a time)")
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.add_argument("--verbose", action="store_true", help="show Flower's and Ray's log")
    _config_arguments(sim)
    sim.set_defaults(func=run_simulate)

    server = sub.add_parser("server", help="run the server: a Flower SuperLink with the federated ServerApp",
                            description="Start a SuperLink, submit the federated run to it, wait until the "
                                        "rounds are done, write the global adapter after each round, stop.")
    server.add_argument("--model", default="builtin", help="base model every site must load (default builtin)")
    server.add_argument("--out", required=True, metavar="ADAPTER", help="global adapter (.safetensors)")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    server.add_argument("--port", type=int, default=9092, help="port of the SuperLink (default 9092)")
    server.add_argument("--min-sites", type=int, default=2, help="sites that must be connected (default 2)")
    server.add_argument("--test", metavar="IMAGE:LABELS", default="", help="a scan the server measures each round")
    server.add_argument("--work-dir", help="folder for logs and Flower's state (default: a new temporary folder)")
    server.add_argument("--ca-cert", help="TLS: CA certificate (PEM); with --cert and --key")
    server.add_argument("--cert", help="TLS: server certificate (PEM)")
    server.add_argument("--key", help="TLS: server private key (PEM)")
    server.add_argument("--node-auth", action="store_true",
                        help="accept only SuperNodes whose public keys were registered (flwr supernode register)")
    server.add_argument("--timeout", type=float, default=24 * 3600, help="give up after this many seconds")
    server.add_argument("--json", action="store_true", help="print the run report as JSON")
    _config_arguments(server)
    server.set_defaults(func=run_server)

    site = sub.add_parser("site", help="run one site: a Flower SuperNode on this site's data",
                          description="Start a SuperNode that connects to --server and trains the federation's "
                                      "adapter on the scan in --data (NAME and NAME_labels); runs until stopped.")
    site.add_argument("--data", required=True, help="folder with one scan and its label map (NAME, NAME_labels)")
    site.add_argument("--server", required=True, metavar="HOST:PORT", help="the SuperLink's address")
    site.add_argument("--model", default="builtin", help="this site's base model (default builtin)")
    site.add_argument("--name", default="", help="the site's name in reports (default: the data folder's name)")
    site.add_argument("--root-certificates", help="TLS: the CA certificate that signed the server's (PEM)")
    site.add_argument("--auth-private-key", help="node authentication: this site's private key")
    site.add_argument("--threads", type=int, default=0, help="torch CPU threads for training (default: all)")
    site.add_argument("--work-dir", help="folder for Flower's state (default: a new temporary folder)")
    site.set_defaults(func=run_site)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def _pair(spec: str) -> tuple[str, str]:
    from napari_vfmseg.cli import UserError
    from napari_vfmseg.federated.site import parse_pair

    try:
        image, labels = parse_pair(spec)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for path in (image, labels):
        if not path.exists():
            raise UserError(f"{path}: file not found")
    return str(image), str(labels)


def _print_rounds(summary: dict) -> None:
    for entry in summary["per_round"]:
        test = entry.get("test_box_dice")
        print(f"round {entry['round']}: test box Dice {'-' if test is None else f'{test:.3f}'}")
        for site, values in sorted(entry["sites"].items()):
            if "error" in values:
                print(f"  {site}: refused: {values['error']}")
                continue
            dice = values.get("heldout_box_dice")
            print(f"  {site}: held-out box Dice {'-' if dice is None else f'{dice:.3f}'}, "
                  f"sent {values['bytes']:,} B, {values['examples']} objects")


def run_simulate(args: argparse.Namespace) -> int:
    from napari_vfmseg.cli import UserError

    try:
        from napari_vfmseg.federated.simulation import simulate
    except ImportError as exc:
        raise UserError(f"Flower is not installed ({exc}); install napari-vfmseg[federated]") from None
    if len(args.site) < 2:
        raise UserError("give at least two --site IMAGE:LABELS")
    if not str(args.out).endswith(".safetensors"):
        raise UserError(f"{args.out}: the adapter file must end in .safetensors")
    sites = [_pair(s) for s in args.site]
    test = _pair(args.test)
    config = _config(args, min_sites=len(sites))
    result = simulate(args.model, sites, test, config, args.out, baselines=not args.no_baselines, cpus=args.cpus,
                      verbose=args.verbose)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_rounds(summary)
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"test box Dice: base {fmt(summary['base_dice'])}, federated ({summary['strategy']}) "
          f"{fmt(summary['federated_dice'])}, pooled {fmt(summary['pooled_dice'])}, "
          f"sites alone {fmt(summary['local_dice_mean'])} on average")
    print(f"sent per site and round: {summary['bytes_per_round_per_site']:,.0f} B "
          f"({100 * summary['bytes_share_of_model']:.2f}% of the model's {summary['model_bytes']:,} B)")
    print(f"global adapter: {args.out}")
    return 0


def run_server(args: argparse.Namespace) -> int:
    from napari_vfmseg.cli import UserError

    try:
        from napari_vfmseg.federated import runtime
    except ImportError as exc:
        raise UserError(f"Flower is not installed ({exc}); install napari-vfmseg[federated]") from None
    from napari_vfmseg.federated.result import RunRecord, report_path

    if not str(args.out).endswith(".safetensors"):
        raise UserError(f"{args.out}: the adapter file must end in .safetensors")
    tls = None
    if args.ca_cert or args.cert or args.key:
        tls = runtime.TLSFiles(Path(args.ca_cert), Path(args.cert) if args.cert else None,
                               Path(args.key) if args.key else None)
        tls.check(server=True)
    if args.test:
        _pair(args.test)
    config = _config(args, min_sites=args.min_sites)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="vfmseg-federated-server-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out).resolve()
    run_config = {"model": args.model, "out": str(out),
                  "test": f"{Path(_pair(args.test)[0]).resolve()}:{Path(_pair(args.test)[1]).resolve()}" if args.test else "",
                  **config.to_record()}
    superlink = runtime.start_superlink(work, args.host, args.port, tls, args.node_auth)
    try:
        connect = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        runtime.wait_for_port(connect, args.port, 60.0, superlink)
        print(f"SuperLink listening on {args.host}:{args.port} (log: {work / 'superlink.log'}); "
              f"waiting for {args.min_sites} site(s)", file=sys.stderr)
        started = time.perf_counter()
        run_id = runtime.submit_run(work, f"{connect}:{args.port}", run_config, tls.ca if tls else None)
        status = runtime.wait_for_run(work, run_id, args.timeout, superlink=superlink)
    finally:
        runtime.stop(superlink)
    report = report_path(out)
    if not report.is_file():
        raise UserError(f"the run ended ({status.get('status')}) without a report; see {work / 'superlink.log'}")
    record = RunRecord.read(report)
    if args.json:
        print(json.dumps({"status": status.get("status"), "seconds": round(time.perf_counter() - started, 1),
                          **record.to_json()}, indent=2))
    else:
        for entry in record.rounds:
            print(f"round {entry.round}: {len(entry.sites)} site(s), {entry.examples} objects, adapter {entry.adapter}")
            for site in entry.sites:
                print(f"  {site.site}: " + (f"refused: {site.error}" if site.error else
                                            f"sent {site.payload_bytes:,} B, held-out box Dice {site.heldout_box_dice}"))
        print(f"run {run_id}: {status.get('status')}; global adapter {out}")
    return 0 if str(status.get("status", "")).endswith("completed") and record.rounds else 1


def run_site(args: argparse.Namespace) -> int:
    from napari_vfmseg.cli import UserError

    try:
        from napari_vfmseg.federated import runtime
    except ImportError as exc:
        raise UserError(f"Flower is not installed ({exc}); install napari-vfmseg[federated]") from None
    from napari_vfmseg.federated.site import find_site_files

    find_site_files(args.data)  # a clear error now rather than at the first round
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="vfmseg-federated-site-"))
    work.mkdir(parents=True, exist_ok=True)
    process = runtime.start_supernode(
        work, args.server, args.data, args.model, args.name,
        root_certificates=Path(args.root_certificates) if args.root_certificates else None,
        auth_private_key=Path(args.auth_private_key) if args.auth_private_key else None,
        threads=args.threads, foreground=True)
    # Stopping this process (SIGTERM by its id, or Ctrl-C) stops the SuperNode with it.
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())
    try:
        return int(process.wait())
    except KeyboardInterrupt:
        process.terminate()
        return int(process.wait())

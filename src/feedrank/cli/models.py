"""`feedrank models ...`: the model registry (publish, list, show, promote, rollback)."""

from __future__ import annotations

import json
import time

import click

REGISTRY_OPT = click.option("--registry", "registry_dir", required=True, type=click.Path(file_okay=False),
                            help="Registry folder (versions/, current, history.jsonl).")


@click.group("models")
def models_group() -> None:
    """Versioned models with an atomic `current` pointer; a server started with
    `feedrank serve --registry DIR` follows `current` and hot-swaps.

    \b
    Examples:
      feedrank models publish var/model --registry var/registry --promote
      feedrank models list --registry var/registry
      feedrank models promote 3 --registry var/registry
      feedrank models rollback --registry var/registry
    """


@models_group.command("publish")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@REGISTRY_OPT
@click.option("--promote", is_flag=True, help="Also make it the current version.")
def publish(bundle: str, registry_dir: str, promote: bool) -> None:
    """Copy a verified model bundle in as the next version.

    \b
    Example:
      feedrank models publish var/model --registry var/registry --promote
    """
    from feedrank.registry.store import ModelRegistry

    reg = ModelRegistry(registry_dir)
    v = reg.publish(bundle, promote=promote)
    click.echo(json.dumps({"version": v, "current": reg.current()}))


@models_group.command("list")
@REGISTRY_OPT
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version.")
def list_cmd(registry_dir: str, as_json: bool) -> None:
    """List versions, marking the current one.

    \b
    Example:
      feedrank models list --registry var/registry
    """
    from feedrank.registry.store import ModelRegistry

    for info in ModelRegistry(registry_dir, create=False).list():
        auc = (info.metrics.get("ranking") or {}).get("auc")
        rec100 = (info.metrics.get("retrieval") or {}).get("recall@100")
        if as_json:
            click.echo(json.dumps({"version": info.version, "current": info.current, "bundle": info.bundle_version,
                                   "created_at": info.created_at, "metrics": info.metrics}))
        else:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(info.created_at))
            click.echo(f"{'*' if info.current else ' '} {info.version:>4}  {info.bundle_version:<24} {when}  "
                       f"auc={auc if auc is None else round(auc, 4)}  recall@100={rec100 if rec100 is None else round(rec100, 4)}")


@models_group.command("show")
@click.argument("version", type=int)
@REGISTRY_OPT
def show(version: int, registry_dir: str) -> None:
    """Print one version's manifest (config, metrics, files and hashes).

    \b
    Example:
      feedrank models show 2 --registry var/registry
    """
    from feedrank.registry.store import ModelRegistry

    reg = ModelRegistry(registry_dir, create=False)
    click.echo((reg.path(version) / "manifest.json").read_text())


@models_group.command("promote")
@click.argument("version", type=int)
@REGISTRY_OPT
def promote(version: int, registry_dir: str) -> None:
    """Make VERSION current (verified first); servers following the registry swap to it.

    \b
    Example:
      feedrank models promote 3 --registry var/registry
    """
    from feedrank.registry.store import ModelRegistry

    reg = ModelRegistry(registry_dir, create=False)
    reg.promote(version)
    click.echo(json.dumps({"current": reg.current()}))


@models_group.command("rollback")
@REGISTRY_OPT
def rollback(registry_dir: str) -> None:
    """Go back to the version that was current before the last promote.

    \b
    Example:
      feedrank models rollback --registry var/registry
    """
    from feedrank.registry.store import ModelRegistry

    reg = ModelRegistry(registry_dir, create=False)
    click.echo(json.dumps({"current": reg.rollback()}))

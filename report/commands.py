"""The report's commands of the `repro` program (``residual_stream.cli``): they read a store and never compute."""
from __future__ import annotations

from pathlib import Path

import click

from repro.errors import UserError
from repro.store import Store


@click.command()
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--keep-going", is_flag=True, help="Show a failing analysis as an error box and build the rest.")
@click.option("--compare", "compare_paths", type=click.Path(path_type=Path), multiple=True,
              help="Another store, shown beside this one in the universality section (repeatable); one of the "
                   "same model (architecture and weights) made under the other reading is also compared with "
                   "this store's invariant channels.")
def report(store_path, out_dir, keep_going, compare_paths):
    """Rebuild both papers' figures and tables from a store and render HTML."""
    from report import builder

    store = Store.existing(store_path)
    refuse_stale(store)
    compared = [compared_store(path) for path in compare_paths]
    builder.build(store, out_dir, keep_going=keep_going, compare=compared)


def compared_store(path: Path) -> Store:
    """A store passed with --compare: current, with a metrics group."""
    store = Store.existing(path)
    refuse_stale(store)
    if not store.has("metrics"):
        raise UserError(f"store {store.path} has no metrics group to compare with; run `repro metrics` on it")
    return store


@click.command()
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True)
@click.option("--strict", is_flag=True, help="Exit non-zero on any deviation from the published numbers.")
def verify(store_path, strict):
    """Print the claims table: each published number against the store's."""
    from report import reference
    from report import verify as verify_claims

    store = Store.existing(store_path)
    refuse_stale(store)
    deviations = verify_claims.print_claims(store, reference.claims_for(str(store.attrs.get("profile_name", ""))))
    if strict and deviations:
        raise click.exceptions.Exit(1)


@click.command()
@click.option("--store", "store_path", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="e.g. data/published/toy.toml")
@click.option("--command", "made_by", required=True, help="The command that made the store (recorded in the file).")
@click.option("--for", "judged_profile", help="The profile the numbers judge (default: the store's own).")
def reference(store_path, out, made_by, judged_profile):
    """Write a store's numbers as its profile's reference (judged by the report with the papers' rules)."""
    from report import reference as reference_numbers

    store = Store.existing(store_path)
    refuse_stale(store)
    click.echo(f"reference written to {reference_numbers.write(store, out, made_by, judged_profile)}")


def refuse_stale(store: Store) -> None:
    """The report and the claims never present a stale group as current, nor read a damaged one's metadata,
    coordinates or masks (the small arrays; ``repro check`` reads every chunk)."""
    store.require_intact(store.groups(), units=False)
    stale = [state for state in store.status() if state.state == "stale"]
    if stale:
        listed = "; ".join(f"{state.name}: {state.why}" for state in stale)
        raise UserError(f"store {store.path} has stale groups ({listed}); rebuild them with `repro pipeline` "
                        "or the stage that makes them, then rerun")


COMMANDS = {"report": report, "verify": verify, "reference": reference}

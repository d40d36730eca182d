"""Mutation testing of the security-critical and scheduling modules, one module at a time.

    python scripts/mutation.py identity          # one module
    python scripts/mutation.py identity crypto   # several
    python scripts/mutation.py --list            # the modules and the tests that cover them
    python scripts/mutation.py crypto --survivors  # only the last run's survivors, new tests
    make mutation MODULE=identity                # the same through make (all modules if unset)

Each module runs in its own copy of the project under ``build/mutation/<module>/`` (so the
worktree never sees mutmut's ``mutants/`` folder, and runs of different modules never share
state): mutmut (pinned in ``[dev]``) mutates only that module's files and runs only the tests
mapped to it below, on SQLite (add ``--postgres`` to run the PostgreSQL variants as well). It
prints the surviving mutants per module and exits non-zero if any survived that is not listed
in ``EQUIVALENT`` with the reason it cannot be killed.

A later layer adds its modules to ``MODULES`` with the test files that prove them.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "mutation"


@dataclass(frozen=True)
class Target:
    sources: tuple[str, ...]
    tests: tuple[str, ...]
    allow: tuple[str, ...] = ()
    """Markers whose tests run here although a plain run leaves them out (``s3``)."""


MODULES: dict[str, Target] = {
    # Fast in-process tests only: mutmut runs the covering tests once per mutant, and the
    # HTTP suites (tests/api) would multiply the run time for the same rules.
    "identity": Target(
        ("src/underlay/identity.py",),
        (
            "tests/test_identity.py",
            "tests/test_identity_accounts.py",
            "tests/test_identity_login.py",
            "tests/api/test_login.py::test_the_back_off_doubles_with_each_failure_up_to_a_cap",
            "tests/api/test_login.py::test_one_address_failing_for_many_users_is_refused",
            "tests/api/test_login.py::"
            "test_unknown_and_inactive_users_cost_one_argon2_computation_like_a_known_one",
        ),
    ),
    "crypto": Target(("src/underlay/crypto.py",), ("tests/test_crypto.py",)),
    "audit": Target(
        (
            "src/underlay/audit.py",
            "src/underlay/audit_chain.py",
            "src/underlay/audit_verify.py",
            "src/underlay/audit_checkpoints.py",
        ),
        ("tests/audit", "tests/test_audit_checkpoints.py"),
    ),
    "blobs": Target(
        ("src/underlay/blobs.py",),
        ("tests/test_blobs.py", "tests/test_blobs_s3.py"),
        allow=("s3",),  # the S3 paths (multipart, abort, the store's own errors)
    ),
    "scoping": Target(("src/underlay/store/db.py",), ("tests/test_store.py",)),
    "api-auth": Target(
        ("src/underlay/api/deps.py", "src/underlay/api/problems.py"),
        (
            "tests/api/test_access.py",
            "tests/api/test_problems.py",
            # a 429's Retry-After, over real HTTP
            "tests/api/test_login.py::test_an_attackers_failures_do_not_lock_the_user_out_elsewhere",
        ),
    ),
    "scheduler": Target(
        (
            "src/underlay/compute/scheduler/policy.py",
            "src/underlay/compute/scheduler/round_state.py",
            "src/underlay/compute/scheduler/reservation.py",
            "src/underlay/compute/scheduler/preemption.py",
            "src/underlay/compute/scheduler/quota.py",
            "src/underlay/compute/scheduler/energy.py",
        ),
        (
            "tests/compute/test_policy.py",
            "tests/compute/test_properties.py",
            "tests/compute/test_backfill.py",
        ),
    ),
}

EQUIVALENT: dict[str, str] = {
    **{
        f"underlay.compute.scheduler.quota.xǁFairShareǁcharge__mutmut_{n}": (
            "the in-place path of charge versus the full one, or > versus >= on equal shares: "
            "the same figures either way (test_fair_share_charged_in_place_is_the_share_worked_"
            "out_afresh), and the charge counter is only compared for a change"
        )
        for n in (2, 3, 13, 15, 16, 17, 18, 38, 43, 64, 69, 70)
    },
    **{
        f"underlay.compute.scheduler.preemption.xǁPreemptorǁ_could_fit__mutmut_{n}": (
            "a looser upper bound in the pruning check: the releases tried after it decide "
            "exactly whether the claimant fits, so only time is lost"
        )
        for n in (12, 15, 16, 22, 24)
    },
    **{
        f"underlay.compute.scheduler.policy.xǁ_Roundǁ_borrow__mutmut_{n}": (
            "the borrow pass's memo of failed verdicts and quota texts (what it stores, whether "
            "it is read, a default or tag inside its keys): without it the same verdict and "
            "text are worked out again"
        )
        for n in (3, 20, 22, 23, 26, 27, 29, 41, 42, 43, 44, 45, 85, 87, 88, 89, 90, 104)
    },
    **{
        f"underlay.compute.scheduler.policy.xǁ_Roundǁ_borrow__mutmut_{n}": (
            "the service level in a borrower's verdict key: borrowers of one project, shape and "
            "class go lowest level first, and one that failed at a lower level would fail at a "
            "higher one too (it may preempt less); the reason does not name the level"
        )
        for n in (9, 10, 11, 12, 17)
    },
    **{
        f"underlay.compute.scheduler.policy.xǁ_Roundǁ_borrow__mutmut_{n}": (
            "the borrowed flag and guaranteed=False passed on: placing works the flag out "
            "again from the ledger (a borrower is above its guarantee), and None is as false"
        )
        for n in (70, 75, 78)
    },
    **{
        f"underlay.compute.scheduler.energy.x_hold_reason__mutmut_{n}": (
            "true division instead of floor division inside int(): the same for the "
            "non-negative seconds of a window's start"
        )
        for n in (30, 34)
    },
    **{
        f"underlay.compute.scheduler.quota.xǁQuotaLedgerǁmay_borrow__mutmut_{n}": (
            "the guarantee's default: a borrow limit and its guarantee come from one Quota, so "
            "a key with a limit always has a guarantee"
        )
        for n in (15, 17, 18)
    },
    "underlay.compute.scheduler.reservation.x__shares_for__mutmut_4": (
        "holding from GPUs with nothing free too: one is picked only once none has a share "
        "left, and its hold is a share of 0"
    ),
    "underlay.identity.x_authenticate__mutmut_23": (
        "expiry at exactly the current microsecond: utcnow() inside cannot be pinned by a test"
    ),
    "underlay.identity.x_authenticate__mutmut_41": (
        "last-use written at exactly one minute: the same clock boundary, and only a write"
    ),
    "underlay.identity.x_authenticate__mutmut_84": (
        "capping a member's role at member: both branches give Role.member"
    ),
    **{
        f"underlay.identity.x_authorize__mutmut_{n}": (
            "the article before 'admin': a project admin is never refused a project action"
        )
        for n in (24, 26, 27)
    },
    "underlay.identity.x__check_grant__mutmut_5": (
        "the separator between grants: GRANTS holds one grant, so it never shows"
    ),
    **{
        f"underlay.identity.x_{fn}_grant__mutmut_{n}": (
            "expiring all of the user's attributes, not only grant_rows: the query before it "
            "autoflushed the user, so they reload the same"
        )
        for fn, n in (("add", 22), ("add", 24), ("remove", 16), ("remove", 18))
    },
    **{
        f"underlay.identity.x_list_members__mutmut_{n}": (
            "join(User) without ON: SQLAlchemy infers the same condition from the only foreign "
            "key from memberships to users"
        )
        for n in (6, 8)
    },
    "underlay.identity.x__keep_one_admin__mutmut_12": (
        "(admins or 1) <= 1: a count is never None, and 0 or 1 admin both refuse"
    ),
    "underlay.identity.x_create_token__mutmut_29": (
        "secrets.token_urlsafe(None) draws 32 bytes, the default"
    ),
    **{
        f"underlay.identity.x_{fn}__mutmut_{n}": (
            "the message of a lost race at the unique constraint: SQLite serialises writers "
            "(BEGIN IMMEDIATE); killed with --postgres by "
            "test_the_loser_of_two_simultaneous_writes_gets_a_conflict"
        )
        for fn, n in (
            ("add_grant", 18),
            ("add_member", 28),
            ("create_project", 32),
            ("create_user", 28),
            ("_flush_unique", 1),
        )
    },
    "underlay.identity.x_list_tokens__mutmut_3": (
        "no ORDER BY: on SQLite the id is the rowid and the user_id index keeps equal keys in "
        "rowid order; PostgreSQL returned them in id order too, even after an update"
    ),
    "underlay.identity.x_verify_login__mutmut_7": (
        "the name cut at 65 characters, not 64: user names have at most 63, so neither matches"
    ),
    "underlay.identity.x_verify_login__mutmut_14": (
        "the length of the password hashed for a missing user: that hash is thrown away, it "
        "only spends the same time as a check"
    ),
    "underlay.crypto.xǁ_MasterKeyǁgenerate__mutmut_2": (
        "secrets.token_bytes(None) draws 32 bytes, the default, which is KEY_BYTES"
    ),
    "underlay.crypto.x__lock_data_keys__mutmut_10": "SQL keywords are case-insensitive",
    "underlay.crypto.xǁKeyringǁderived_key__mutmut_7": "HKDF's salt defaults to None",
    "underlay.crypto.xǁKeyringǁdata_key__mutmut_24": (
        "the cache then never hits: the key is unwrapped again, the same key (only slower)"
    ),
    "underlay.crypto.xǁKeyringǁrotate__mutmut_5": (
        "the order data keys are re-wrapped in: one transaction, no row locks taken in order"
    ),
    "underlay.crypto.xǁKeyringǁrotate__mutmut_29": (
        "zip(strict=None): rows and keys are built from one list, always the same length"
    ),
    "underlay.crypto.xǁKeyringǁrotate__mutmut_32": "zip without strict: the same length anyway",
    "underlay.crypto.xǁKeyringǁrotate__mutmut_33": "zip(strict=False): the same length anyway",
    "underlay.crypto.x__is_referenced__mutmut_2": (
        "limit(None): scalar() reads the first row whatever the limit"
    ),
    "underlay.crypto.x__is_referenced__mutmut_6": "limit(2): scalar() reads the first row",
    "underlay.crypto.xǁSigningKeyǁ__init____mutmut_15": "overwrite=None is falsy, as False",
    "underlay.audit.xǁAuditLogǁcheckpoint_head__mutmut_4": (
        "synchronize_session=None: SQLAlchemy skips its checks and syncs nothing, as for False"
    ),
    "underlay.audit.xǁAuditLogǁappend__mutmut_68": "as checkpoint_head__mutmut_4",
    "underlay.audit.xǁAuditLogǁappend__mutmut_102": "as checkpoint_head__mutmut_4",
    "underlay.audit.x__detail_text__mutmut_11": "codec names are case-insensitive",
    "underlay.audit.xǁAuditLogǁcheckpoint_head__mutmut_37": (
        "the seq in _flush's message: a checkpoint row at the head makes max(seq) >= head, so "
        "checkpoint_head returns before this flush can hit that duplicate"
    ),
    "underlay.audit.xǁAuditLogǁ_export_after_commit__mutmut_1": (
        "the export flag is never cleared: Database.session commits once, the flag dies with it"
    ),
    "underlay.audit.xǁAuditLogǁ_export_after_commit__mutmut_3": "as _export_after_commit__mutmut_1",
    "underlay.audit.xǁAuditLogǁ_export_after_commit__mutmut_4": "as _export_after_commit__mutmut_1",
    "underlay.audit.xǁAuditLogǁ_export_after_commit__mutmut_5": "as _export_after_commit__mutmut_1",
    **{
        f"underlay.audit.xǁAuditLogǁ_checkpoint__mutmut_{n}": (
            "the once-per-session export flag or once=True: event.listen registers a bound "
            "method once per session anyway, and a session commits once"
        )
        for n in (33, 35, 36, 37, 38, 39, 40, 41, 45, 49, 52)
    },
    **{
        f"underlay.audit_checkpoints.x_check_external__mutmut_{n}": (
            "the 'differs in' wording: a database checkpoint that passed the chain walk has its "
            "entry's hash, and that entry was just found equal to the external record"
        )
        for n in (74, 78, 79)
    },
    "underlay.audit_checkpoints.xǁCheckpointLoopǁstop__mutmut_1": (
        "join without a time limit: the thread ends as soon as the stop event is set"
    ),
    "underlay.audit_checkpoints.xǁCheckpointLoopǁstop__mutmut_2": "join(11): as stop__mutmut_1",
    **{
        f"underlay.audit_checkpoints.xǁObjectLocationǁ__init____mutmut_{n}": (
            "how the root's slash is stripped: fsspec's url_to_fs returns it without a "
            "trailing slash already"
        )
        for n in (7, 8, 9)
    },
    "underlay.audit_checkpoints.xǁObjectLocationǁ_objects__mutmut_1": (
        "invalidate_cache(None) clears the whole listing cache, this root's included"
    ),
    "underlay.audit_checkpoints.xǁObjectLocationǁappend_after__mutmut_18": (
        "codec names are case-insensitive"
    ),
    "underlay.audit_checkpoints.xǁObjectLocationǁread__mutmut_13": (
        "codec names are case-insensitive"
    ),
    "underlay.audit_checkpoints.x__hashes__mutmut_7": (
        "range step 1: overlapping chunks of the same seqs, the same hashes found (slower)"
    ),
    "underlay.audit_checkpoints.x_committed_after__mutmut_4": (
        "limit(None): scalar() reads the first row whatever the limit"
    ),
    "underlay.audit_checkpoints.x_committed_after__mutmut_9": (
        "limit(2): scalar() reads the first row"
    ),
    "underlay.audit_checkpoints.x_committed_after__mutmut_12": (
        "no ORDER BY: SQLite returns these rows in primary-key order anyway; killed with "
        "--postgres by test_exports_follow_seq_order_whatever_order_rows_are_stored_in"
    ),
    "underlay.audit_checkpoints.xǁExternalCheckpointǁto_json__mutmut_28": (
        "codec names are case-insensitive"
    ),
    "underlay.audit_checkpoints.xǁFileLocationǁappend_after__mutmut_1": (
        "no fsync of the folder after creating the file: durability across a power cut, which "
        "no test here can cause"
    ),
    "underlay.audit_checkpoints.xǁFileLocationǁappend_after__mutmut_2": (
        "as append_after__mutmut_1 (the folder fsynced on every append but the first)"
    ),
    "underlay.audit_checkpoints.xǁFileLocationǁappend_after__mutmut_12": "385 is 0o600",
    "underlay.audit_checkpoints.xǁFileLocationǁappend_after__mutmut_28": (
        "codec names are case-insensitive"
    ),
    "underlay.audit_checkpoints.xǁFileLocationǁread__mutmut_22": "codec names are case-insensitive",
    "underlay.audit_checkpoints.xǁFileLocationǁ_newest_seq__mutmut_21": (
        "pread past the end of the file returns the bytes up to the end"
    ),
    "underlay.audit_checkpoints.xǁFileLocationǁ_newest_seq__mutmut_23": (
        "codec names are case-insensitive"
    ),
    "underlay.audit_checkpoints.xǁFileLocationǁ_newest_seq__mutmut_27": (
        "the tail's cut first line is read too: a cut line never parses as a record, and an "
        "uncut one is a record that may be used"
    ),
    "underlay.audit_checkpoints.xǁFileLocationǁ_newest_seq__mutmut_29": (
        "a record skipped in the tail is found by the second pass over the whole file"
    ),
    "underlay.audit_checkpoints.xǁFileLocationǁ_newest_seq__mutmut_33": (
        "no early stop after the whole-file pass: the loop ends there anyway"
    ),
    "underlay.store.db.xǁDatabaseǁping__mutmut_4": "SQL keywords are case-insensitive",
    "underlay.store.db.xǁDatabaseǁ__init____mutmut_15": "expire_on_commit=None is falsy, as False",
    "underlay.store.db.xǁDatabaseǁ_create_engine__mutmut_13": (
        "no connect_args: SQLAlchemy 2 sets check_same_thread=False for file databases itself, "
        "and PRAGMA busy_timeout sets the same wait as sqlite3's timeout"
    ),
    "underlay.store.db.xǁDatabaseǁ_create_engine__mutmut_15": "as _create_engine__mutmut_13",
    "underlay.store.db.xǁDatabaseǁalembic_config__mutmut_7": (
        "alembic's config is a ConfigParser: option names are lower-cased"
    ),
    **{
        f"underlay.api.problems.x__validation_errors__mutmut_{n}": (
            "the default of a validation error's type: pydantic gives every error a type"
        )
        for n in (24, 27)
    },
    "underlay.api.problems.x_error_response__mutmut_15": (
        "HTTP header names are case-insensitive: RETRY-AFTER is Retry-After"
    ),
    # blobs: what no test here can tell apart (each checked by reading the mutant)
    **{
        f"underlay.blobs.x__{fn}__mutmut_{n}": (
            "the pending-delete list's default or reset value: the key is always set once a "
            "delete is pending, and a reset None is rebuilt as [] before the next use"
        )
        for fn, n in (("delete_pending", 3), ("delete_pending", 5), ("forget_pending", 1))
    },
    **{
        f"underlay.blobs.xǁBlobStoreǁ__init____mutmut_{n}": (
            "the root's trailing '/' (fsspec's url_to_fs already strips it) and a protocol "
            "given as one string (every supported filesystem gives a tuple)"
        )
        for n in (10, 12, 14)
    },
    **{
        f"underlay.blobs.xǁBlobStoreǁ_abandon__mutmut_{n}": (
            "the branch for a remote file without discard(): every fsspec buffered file, "
            "s3fs's included, has one"
        )
        for n in (6, 10)
    },
    **{
        f"underlay.blobs.xǁBlobStoreǁ_write__mutmut_{n}": (
            "which writer seals the chunks (a thread for blobs of several chunks, inline for "
            "one): the same bytes either way, only the overlap differs"
        )
        for n in (17, 18, 20)
    },
    **{
        f"underlay.blobs.xǁBlobStoreǁopen__mutmut_{n}": (
            "create=True for the data key when opening: a project with a blob row has its key"
        )
        for n in (11, 14, 15)
    },
    "underlay.blobs.xǁBlobStoreǁ_read__mutmut_9": "fsspec opens in 'rb' by default",
    "underlay.blobs.xǁBlobStoreǁ_read__mutmut_31": "'' or a new buffer is a new buffer",
    "underlay.blobs.xǁBlobStoreǁlocation__mutmut_3": (
        "the fan-out folder's width: every path, written or read, comes from location()"
    ),
    "underlay.blobs.xǁBlobStoreǁresolve__mutmut_3": "refs are typed str; the API gives only str",
    "underlay.blobs.xǁBlobStoreǁresolve__mutmut_16": (
        "no LIMIT on the prefix match: only the count in the ambiguity message differs, "
        "beyond 1,000 matching blobs"
    ),
    **{
        f"underlay.blobs.xǁBlobStoreǁsweep_partials__mutmut_{n}": (
            "ls() without detail=False: both backends list names by default (LocalFileSystem."
            "ls and s3fs's _ls)"
        )
        for n in (6, 8)
    },
    "underlay.blobs.xǁBlobStoreǁsweep_partials__mutmut_20": (
        "a partial modified at exactly the cutoff's microsecond"
    ),
    "underlay.blobs.xǁBlobStoreǁsweep_partials__mutmut_29": (
        "a partial removed by another sweeper between the listing and its removal: a race "
        "no test can pin"
    ),
    "underlay.blobs.xǁBlobStoreǁsweep_partials__mutmut_3": (
        "the listing cache of this process's filesystem: only another process's writes "
        "would be missed, and the tests write through the same filesystem instance"
    ),
}

_RESULT = re.compile(r"^\s*(?P<name>\S+): (?P<status>[a-z ]+?)\s*$")


def _copy_project(work: Path, target: Target, postgres: bool) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    _write_config(work, target, postgres)


def _write_config(work: Path, target: Target, postgres: bool) -> None:
    left_out = [m for m in ("slow", "s3", "browser", "ray") if m not in target.allow]
    if not postgres:
        left_out.append("postgres")
    markers = " and ".join(f"not {m}" for m in left_out)
    pytest_ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    ini = pytest_ini["ini_options"]
    values = {
        # JSON strings and lists are valid TOML values
        "[tool.pytest.ini_options]": {
            "testpaths": ini["testpaths"],
            "addopts": "-p no:cacheprovider",
            "filterwarnings": ["error"],
            "timeout": 300,
            "markers": ini["markers"],
        },
        "[tool.mutmut]": {
            "source_paths": ["src"],
            "only_mutate": list(target.sources),
            "pytest_add_cli_args": ["-m", markers, "-q"],
            "pytest_add_cli_args_test_selection": list(target.tests),
            "use_git_change_detection": False,
        },
    }
    lines = []
    for table, fields in values.items():
        lines.append(table)
        lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
        lines.append("")
    (work / "pyproject.toml").write_text("\n".join(lines))


def _results(work: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = {}
    for line in out.splitlines():
        m = _RESULT.match(line)
        if m:
            found[m["name"]] = m["status"]
    return found


def _refresh_tests(work: Path) -> None:
    """Put the worktree's current tests where mutmut runs them (``mutants/tests``)."""
    for where in (work / "tests", work / "mutants" / "tests"):
        shutil.rmtree(where)
        shutil.copytree(ROOT / "tests", where, ignore=shutil.ignore_patterns("__pycache__"))


def run_module(name: str, *, postgres: bool, jobs: int, survivors_only: bool = False) -> list[str]:
    """Mutate one module; returns the survivors that are not known to be equivalent.

    ``survivors_only`` reuses the last run of the module and tests only the mutants that
    survived it, against the current tests: the quick loop while killing survivors (the
    source must not have changed since that run).
    """
    target = MODULES[name]
    work = BUILD / name
    names: list[str] = []
    before: dict[str, str] = {}
    if survivors_only and (work / "mutants").is_dir():
        _refresh_tests(work)
        _write_config(work, target, postgres)
        before = _results(work)
        names = sorted(m for m, s in before.items() if s in ("survived", "no tests"))
        print(f"== {name}: testing the {len(names)} survivors of the last run again", flush=True)
    else:
        _copy_project(work, target, postgres)
        print(f"== {name}: mutating {', '.join(target.sources)}", flush=True)
    print(f"   with {', '.join(target.tests)}", flush=True)
    if names or not survivors_only:
        subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *names],
            cwd=work,
            check=False,
        )
    results = _results(work)
    if before:  # mutmut forgets the other mutants' results when told to run a few
        results = {**before, **{m: results.get(m, "not checked") for m in names}}
    counts: dict[str, int] = {}
    for status in results.values():
        counts[status] = counts.get(status, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    tested = sum(n for s, n in counts.items() if s not in ("skipped", "not checked"))
    score = 100.0 * killed / tested if tested else 0.0
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"== {name}: {len(results)} mutants ({summary}); {score:.1f} % killed", flush=True)
    survivors = sorted(m for m, s in results.items() if s in ("survived", "no tests"))
    left = [m for m in survivors if m not in EQUIVALENT]
    for m in survivors:
        why = EQUIVALENT.get(m)
        print(f"   survived: {m}" + (f"  (equivalent: {why})" if why else ""), flush=True)
    if left:
        print(f"   see one with: (cd {work} && python -m mutmut show <name>)", flush=True)
    return left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help=f"some of: {', '.join(MODULES)} (default all)")
    parser.add_argument("--list", action="store_true", help="show modules and their tests")
    parser.add_argument("--postgres", action="store_true", help="also run PostgreSQL variants")
    parser.add_argument("--jobs", type=int, default=2, help="parallel test processes")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="test only the last run's survivors again, against the current tests",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, target in MODULES.items():
            print(f"{name}: {' '.join(target.sources)}\n    tests: {' '.join(target.tests)}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        print(f"unknown module(s) {', '.join(unknown)}; choose from: {', '.join(MODULES)}")
        return 2
    left: list[str] = []
    for name in args.modules or list(MODULES):
        left += run_module(
            name, postgres=args.postgres, jobs=args.jobs, survivors_only=args.survivors
        )
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())

"""``computeagent-manage``: local administration (database schema, image cache)."""
import argparse
import json
import sys

from computeagent.conf import CONF


def main(argv=None):
    p = argparse.ArgumentParser(prog="computeagent-manage")
    p.add_argument("--config-file", action="append", default=[])
    sub = p.add_subparsers(dest="cmd", required=True)
    db = sub.add_parser("db").add_subparsers(dest="sub", required=True)
    db.add_parser("sync", help="create or upgrade the schema (Alembic)")
    db.add_parser("version")
    ic = sub.add_parser("image-cache").add_subparsers(dest="sub", required=True)
    ic.add_parser("list", help="cached bases, their age and whether a disk uses them")
    clean = ic.add_parser("clean", help="remove unused bases older than the minimum age")
    clean.add_argument("--dry-run", action="store_true")
    clean.add_argument("--min-age", type=int, default=None,
                       help="seconds (default: [image_cache] "
                            "remove_unused_original_minimum_age_seconds)")
    args = p.parse_args(argv)
    conf_args = []
    for f in args.config_file:
        conf_args += ["--config-file", f]
    CONF(conf_args, project="computeagent")

    if args.cmd == "db":
        from computeagent.db import api as db_api
        from computeagent.db import migration
        d = db_api.Database(CONF.database.connection)
        if args.sub == "sync":
            d.sync()
        print(migration.db_version(d.engine))
        return 0
    from computeagent.images import cache
    c = cache.ImageCache(CONF.instances_path)
    if args.sub == "list":
        for b in c.list_bases():
            print(json.dumps(b, sort_keys=True, default=str))
    else:
        removed = c.clean(min_age_seconds=args.min_age, dry_run=args.dry_run)
        for r in removed:
            print(("would remove " if args.dry_run else "removed ") + r)
        print("%d base(s) %s" % (len(removed),
                                  "to remove" if args.dry_run else "removed"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

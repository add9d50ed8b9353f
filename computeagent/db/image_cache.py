"""Records of the image pre-cache (table ``image_cache``), as plain dicts."""
import sqlalchemy as sa

from computeagent.db import api
from computeagent.db import models


def upsert(db, image_id, **values):
    """Create or update the record of ``image_id``; return it."""
    with db.session() as s:
        rec = s.get(models.ImageCacheEntry, image_id)
        if rec is None:
            values.setdefault("image", {})
            values.setdefault("state", "queued")
            rec = models.ImageCacheEntry(image_id=image_id, **values)
            s.add(rec)
        else:
            for k, v in values.items():
                setattr(rec, k, v)
        s.flush()
        return api._to_dict(rec)


def get(db, image_id):
    with db.session() as s:
        rec = s.get(models.ImageCacheEntry, image_id)
        return api._to_dict(rec) if rec is not None else None


def get_all(db, states=None):
    with db.session() as s:
        q = sa.select(models.ImageCacheEntry)
        if states is not None:
            q = q.where(models.ImageCacheEntry.state.in_(list(states)))
        return [api._to_dict(r) for r in
                s.scalars(q.order_by(models.ImageCacheEntry.created_at))]


def delete(db, image_id):
    with db.session() as s:
        rec = s.get(models.ImageCacheEntry, image_id)
        if rec is not None:
            s.delete(rec)

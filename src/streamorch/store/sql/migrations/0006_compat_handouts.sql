-- Streams that POST /streams/assign handed to an instance of the original protocol
-- and that it has not reported running yet. They count as running there, so a move
-- off the instance cannot finish before the instance has had a chance to report them.
CREATE TABLE compat_handouts (
    worker_id  uuid NOT NULL REFERENCES workers (id),
    stream_key text NOT NULL,
    handed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (worker_id, stream_key)
);

-- Instances of the original protocol are workers of kind 'original' (the rest are 'sdk'):
-- placement never moves a stream off a live one (it cannot be told to stop), and
-- `generation` says which original client it is (C1, C2, C3; 'C1/C2' until its first
-- heartbeat tells them apart).
ALTER TABLE workers
    ADD COLUMN kind text NOT NULL DEFAULT 'sdk' CHECK (kind IN ('sdk', 'original')),
    ADD COLUMN generation text;

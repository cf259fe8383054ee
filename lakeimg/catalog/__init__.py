"""The catalog: runs table, lineage, time travel, reproduction, training sets, maintenance."""

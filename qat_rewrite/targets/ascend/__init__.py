"""The Huawei Ascend target: AMCT's scheme (ULQ data, ARQ weights), record file, deploy model."""

"""The Xilinx DPU target: its arithmetic, deploy formats and integer reference runner."""

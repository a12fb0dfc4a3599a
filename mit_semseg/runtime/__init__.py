"""Process-level helpers every command shares: device parsing, the allocator
setting, fast exit, CPU counts and logging. Imports nothing else of the
package, so any module may use it."""
from .devices import (DeviceUnavailableError, NotSupportedCliException, device_names,
                      parse_devices, resolve_device, resolve_devices)
from .log import AverageMeter, setup_logger
from .process import (allocator_state, cpu_count, exit_now, loader_workers, release_memory,
                      tune_allocator)

__all__ = ["DeviceUnavailableError", "NotSupportedCliException", "parse_devices",
           "device_names", "resolve_device", "resolve_devices", "AverageMeter", "setup_logger",
           "allocator_state", "cpu_count", "exit_now", "loader_workers", "release_memory",
           "tune_allocator"]

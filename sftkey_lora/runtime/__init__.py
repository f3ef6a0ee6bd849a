"""Facts of the process and the machine that every layer needs: this process's rank among
several and waiting for the others (`distributed`), the device, the precision and the memory
used (`hardware`). A leaf: it imports nothing of the package but its errors."""

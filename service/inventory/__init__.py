"""The inventory: the hosts the remediator may reach over SSH, in Ansible's YAML inventory format
(docs/inventory.md). A rule resolves an alert to hosts of it; the ``ssh`` step and ``rolling`` over a
group act on them; a host that is not in it is never contacted.

- model.py: :class:`Host`, :class:`Inventory` and how names resolve to hosts
- loading.py: reading and checking the file (every problem with file and line)
"""

from service.inventory.loading import inventory_from_source, load_inventory
from service.inventory.model import Host, Inventory, UnknownHosts

__all__ = ["Host", "Inventory", "UnknownHosts", "inventory_from_source", "load_inventory"]

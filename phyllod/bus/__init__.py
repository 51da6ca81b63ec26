"""Every dbus-fast line of the daemon; the names it speaks are contract.py's.

- :mod:`.service`: the life cycle of phyllod's connection (connect, name, loss).
- :mod:`.objects`: the exported objects, kept in step with the daemon's snapshot.
- :mod:`.interfaces`: what each object looks like (contract.py's tables).
- :mod:`.gate`: every call passes it first: bounds, object lists, authorization.
- :mod:`.polkit`: the authority the daemon's root hands to the service.
- :mod:`.logind`: the sleep inhibitor. :mod:`.connect`: ``open_bus()`` for all.
- :mod:`.strings`, :mod:`.compat`: what older dbus-fast releases get wrong.
"""

"""Reconcile hands the PCI verdict the functions going to the same guest: bus mates in
other IOMMU groups count for the bus reset, never for the group."""

from __future__ import annotations

from dataclasses import replace

from factories import guest, pci, policy

from phyllod.core.model import HostFacts, PciFunction, State
from phyllod.core.plan import Attach, World
from phyllod.core.reconcile import reconcile

PORT = PciFunction(address="0000:00:01.0", vendor="8086", device="1901", class_code="060400",
                   driver="pcieport",
                   iommu_group=1)
GPU = pci("0000:01:00.0", "10de", "1b80", "030000", group=2, driver="nouveau")
AUDIO = pci("0000:01:00.1", "10de", "10f0", "040300", group=3, driver="snd_hda_intel")


def facts() -> HostFacts:
    """A GPU and its audio behind one port, each in its own group (the port has ACS),
    neither with a reset of its own: the kernel shows no reset file for them."""
    functions = {PORT.address: PORT}
    for d in (GPU, AUDIO):
        functions[d.address] = PciFunction(address=d.address, vendor=d.vendor, device=d.product,
                                           class_code=d.device_class, driver=d.driver,
                                           iommu_group=d.iommu_group, reset_method="",
                                           reset_shown=False, parent=PORT.address)
    return HostFacts(iommu_enabled=True, functions=functions,
                     groups={1: (PORT.address,), 2: (GPU.address,), 3: (AUDIO.address,)})


def world() -> World:
    return World(devices={d.id: d for d in (GPU, AUDIO)}, guests={"gaming": guest("gaming")},
                 host=facts())


def test_bus_mates_going_to_the_same_guest_lift_no_reset():
    both = policy('[[rule]]\nname="gpu"\nmatch={vendor="10de"}\nguest="gaming"\n')
    plan = reconcile(both, world())
    # Each attaches alone (different groups), nothing to prepare: no group mate.
    assert set(plan.steps) == {Attach(slot=GPU.slot, device=GPU, guest="gaming", rule="gpu"),
                                 Attach(slot=AUDIO.slot, device=AUDIO, guest="gaming", rule="gpu")}


def test_a_bus_mate_left_on_the_host_keeps_no_reset():
    gpu_only = policy('[[rule]]\nname="gpu"\nmatch={class="03"}\nguest="gaming"\n')
    a = reconcile(gpu_only, world()).assignments[GPU.id]
    assert a.state is State.DENIED
    assert "resets it only together with 0000:01:00.1" in a.reason
    elsewhere = policy('[[rule]]\nname="gpu"\nmatch={class="03"}\nguest="gaming"\n'
                       '[[rule]]\nname="audio"\nmatch={class="04"}\nguest="other"\n')
    w = replace(world(), guests={"gaming": guest("gaming"), "other": guest("other")})
    assert reconcile(elsewhere, w).assignments[GPU.id].state is State.DENIED

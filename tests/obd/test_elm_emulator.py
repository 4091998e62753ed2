"""Our ELM327 link against ELM327-emulator, an adapter emulator nobody here wrote.

The emulator answers each PID from a sequence that advances per request.
Two emulator instances, same scenario: our link (python-OBD transport, our
``pids`` decoding) reads one, stock python-OBD with its own decoders reads
the other, request for request.  The values must agree, so neither our
simulator nor our decoder is the yardstick.
"""

from __future__ import annotations

from pathlib import Path

import obd
import pytest

from agent.obd.elm_link import ElmLink
from agent.obd.link import ObdError
from agent.obd.pids import decode
from tests.support.elm_emulator import emulator


def test_rpm_and_speed_agree_with_stock_python_obd(tmp_path: Path) -> None:
    with emulator(tmp_path) as ours_port, emulator(tmp_path) as theirs_port:
        link = ElmLink(ours_port, baudrate=38400)
        info = link.open()
        stock = obd.OBD(theirs_port, baudrate=38400, fast=False)
        try:
            assert stock.status() == obd.OBDStatus.CAR_CONNECTED
            assert info.protocol == stock.protocol_name() == "ISO 15765-4 (CAN 11/500)"
            assert info.adapter.startswith("ELM327")
            ours_rpm, ours_speed, stock_rpm, stock_speed = [], [], [], []
            for _ in range(6):
                for pid, out in ((0x0C, ours_rpm), (0x0D, ours_speed)):
                    replies = link.request(0x01, pid)
                    assert list(replies) == [0x7E8]
                    out.append(decode(pid, replies[0x7E8])[1])
                stock_rpm.append(stock.query(obd.commands.RPM).value.magnitude)
                stock_speed.append(stock.query(obd.commands.SPEED).value.magnitude)
        finally:
            link.close()
            stock.close()
    assert ours_rpm == stock_rpm
    assert ours_speed == stock_speed
    # The emulator's sequence moves: a link that repeated one answer would fail here.
    assert len(set(ours_rpm)) > 2 and len(set(ours_speed)) > 2


def test_voltage_vin_and_a_foreign_reply(tmp_path: Path) -> None:
    with emulator(tmp_path) as port:
        link = ElmLink(port, baudrate=38400)
        link.open()
        try:
            volts = link.voltage()
            assert volts is not None and 6.0 < volts < 16.0
            vin = link.request(0x09, 0x02)[0x7E8]
            assert vin[:3] == bytes.fromhex("490201") and len(vin) == 20
            assert vin[3:].decode("ascii").isalnum()
            # The emulator answers 01 A6 from another ECU with a non-01 reply:
            # the link passes it up and the decoder refuses it (no false reading).
            try:
                replies = link.request(0x01, 0xA6)
            except ObdError as exc:
                assert exc.kind in ("no_data", "silence")
            else:
                for data in replies.values():
                    with pytest.raises(ValueError, match="does not answer 01 A6"):
                        decode(0xA6, data)
        finally:
            link.close()

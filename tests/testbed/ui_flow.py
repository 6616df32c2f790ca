"""The operator's steps in the web UI, for the Chromium end-to-end tests.

Owns driving Debian's headless Chromium through Selenium and
``/usr/bin/chromedriver`` (no browser download) and the steps both UI tests
take: log in, open a resource, run a command in the web shell, assign an
image. Screenshots are written by :func:`shot`.
"""

from __future__ import annotations

import time
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,900",
)  # fmt: skip


def chromium(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    drv.implicitly_wait(5)
    return drv


def wait(pred, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def shot(drv, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    drv.save_screenshot(str(folder / f"{name}.png"))


def login(drv, user: str, password: str) -> None:
    """Submit the log-in form and wait until its answer page has replaced it (busy machines)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.ui import WebDriverWait

    drv.find_element(By.ID, "name").clear()
    drv.find_element(By.ID, "name").send_keys(user)
    drv.find_element(By.ID, "password").send_keys(password)
    button = drv.find_element(By.ID, "login")
    button.click()
    WebDriverWait(drv, 30).until(staleness_of(button))


def open_resource(drv, base: str, mac: str):
    """Search the resource list for ``mac``, open its page; returns the row's text."""
    from selenium.webdriver.common.by import By

    drv.get(base + "/resources?q=" + mac)
    row = drv.find_element(By.CSS_SELECTOR, "tr[data-resource]")
    text = row.text
    row.find_element(By.TAG_NAME, "a").click()
    return text


def shell_run(drv, command: str, expect: str, timeout: float = 30) -> str:
    """From a resource page: open the web shell, type ``command``, wait for ``expect``."""
    from selenium.webdriver.common.by import By

    drv.find_element(By.ID, "webshell").click()
    wait(lambda: drv.find_element(By.ID, "terminal").get_attribute("data-session"), timeout,
         "the web shell to connect")  # fmt: skip
    drv.execute_script("window.provisiondShell.send(arguments[0])", command + "\r")
    return wait(lambda: (t := drv.execute_script("return window.provisiondShell.text()"))
                and expect in t and t, timeout, "the command's output")  # fmt: skip


def assign(drv, image: str, mode: str = "sanboot", before_confirm=None) -> None:
    """From a resource page: Assign -> image + mode -> review -> confirm."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    drv.find_element(By.ID, "assign").click()
    Select(drv.find_element(By.ID, "image")).select_by_value(image)
    drv.find_element(By.ID, f"mode-{mode}").click()
    drv.find_element(By.ID, "review").click()
    if before_confirm:
        before_confirm()
    drv.find_element(By.ID, "confirm").click()
    errors = drv.find_elements(By.CLASS_NAME, "error")
    assert not errors, [e.text for e in errors]
    assert "/appliances/" in drv.current_url

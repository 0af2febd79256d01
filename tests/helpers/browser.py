"""Headless Chromium for the tests of pages (the comparison report, the server's page), driven by
Selenium: Debian's chromium and chromium-driver, which .ci/run installs; a test skips without them."""

import shutil

import pytest


def headless_chromium(*extra_args: str, height: int = 1600):
    """A Selenium driver of headless Chromium at 1280 x `height`, with `extra_args` on its command line."""
    webdriver = pytest.importorskip("selenium.webdriver")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size=1280,{height}")
    for arg in extra_args:
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
